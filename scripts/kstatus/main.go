// kstatus prints what kstatus (sigs.k8s.io/cli-utils/pkg/kstatus/status, the
// library Flux and kpt use) computes for one object: the object as JSON or
// YAML on stdin, {"status": "...", "message": "..."} as JSON on stdout.
//
// scripts/testenv install builds it (the module version is pinned in
// scripts/versions.env); tests/gitops.rs runs it on live objects.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
	"sigs.k8s.io/yaml"
)

func main() {
	input, err := io.ReadAll(os.Stdin)
	if err != nil {
		fail("reading stdin: %v", err)
	}
	// YAML is a superset of JSON, so one converter takes both.
	doc, err := yaml.YAMLToJSON(input)
	if err != nil {
		fail("decoding the object: %v", err)
	}
	// Decoded as the API machinery decodes objects (integers as int64).
	var obj unstructured.Unstructured
	if err := obj.UnmarshalJSON(doc); err != nil {
		fail("decoding the object: %v", err)
	}
	result, err := status.Compute(&obj)
	if err != nil {
		fail("computing the status: %v", err)
	}
	out, err := json.Marshal(map[string]string{
		"status":  result.Status.String(),
		"message": result.Message,
	})
	if err != nil {
		fail("encoding the result: %v", err)
	}
	fmt.Println(string(out))
}

func fail(format string, args ...interface{}) {
	fmt.Fprintf(os.Stderr, "kstatus: "+format+"\n", args...)
	os.Exit(1)
}
