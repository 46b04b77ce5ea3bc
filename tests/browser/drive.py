#!/usr/bin/env python3
"""Drives headless Chromium through the DevTools protocol over a pipe
(--remote-debugging-pipe: no websocket, no third-party package) for
tests/file_level.rs. Reads steps as JSON from argv[1]; prints one JSON
object with what each step saw.

usage: drive.py STEPS_JSON CHROMIUM SPKI_PIN DOWNLOAD_DIR PROFILE_DIR

Steps: {"navigate": url} | {"click": css} | {"check": css} | {"download": css}
| {"until": text, "timeout": seconds}
After navigate and click (which must load a page), the page's text is
recorded; after download, the downloaded file's path. check ticks a
checkbox. until waits for the page (which may reload itself) to show
text, then records the page's text; past the timeout it fails with what
the page showed.
"""
import json
import os
import subprocess
import sys
import time

steps, chromium, pin, download_dir, profile = sys.argv[1:6]
steps = json.loads(steps)

to_chrome_r, to_chrome_w = os.pipe()
from_chrome_r, from_chrome_w = os.pipe()


def child_fds():
    # dup2 onto the same number is a no-op that keeps close-on-exec: clear it.
    os.dup2(to_chrome_r, 3)
    os.dup2(from_chrome_w, 4)
    os.set_inheritable(3, True)
    os.set_inheritable(4, True)


proc = subprocess.Popen(
    [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
     "--remote-debugging-pipe", f"--user-data-dir={profile}",
     # The session's certificate is accepted by its public key's pin, and
     # by nothing else.
     f"--ignore-certificate-errors-spki-list={pin}", "about:blank"],
    preexec_fn=child_fds, close_fds=False,
    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
os.close(to_chrome_r)
os.close(from_chrome_w)
pending = b""
next_id = 0
events = []


def read_message(deadline):
    global pending
    while b"\0" not in pending:
        if time.time() > deadline:
            raise TimeoutError("no answer from Chromium")
        chunk = os.read(from_chrome_r, 65536)
        if not chunk:
            raise EOFError("Chromium closed the pipe")
        pending += chunk
    raw, pending = pending.split(b"\0", 1)
    return json.loads(raw)


def call(method, params=None, session=None, timeout=20):
    global next_id
    next_id += 1
    msg = {"id": next_id, "method": method, "params": params or {}}
    if session:
        msg["sessionId"] = session
    os.write(to_chrome_w, json.dumps(msg).encode() + b"\0")
    deadline = time.time() + timeout
    while True:
        m = read_message(deadline)
        if m.get("id") == next_id:
            if "error" in m:
                raise RuntimeError(f"{method}: {m['error']}")
            return m.get("result", {})
        events.append(m)


def wait_event(method, session=None, timeout=20, where=lambda p: True):
    deadline = time.time() + timeout
    while True:
        for i, e in enumerate(events):
            if e.get("method") == method and (session is None or e.get("sessionId") == session) \
                    and where(e.get("params", {})):
                del events[i]
                return e["params"]
        events.append(read_message(deadline))


def page_text(session):
    r = call("Runtime.evaluate", {"expression": "document.body ? document.body.innerText : ''",
                                  "returnByValue": True}, session)
    return r["result"].get("value", "")


out = {"pages": [], "downloads": []}
try:
    call("Browser.setDownloadBehavior",
         {"behavior": "allow", "downloadPath": download_dir, "eventsEnabled": True})
    target = call("Target.createTarget", {"url": "about:blank"})["targetId"]
    session = call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
    call("Page.enable", {}, session)
    for step in steps:
        if "navigate" in step:
            call("Page.navigate", {"url": step["navigate"]}, session)
            wait_event("Page.loadEventFired", session)
            out["pages"].append(page_text(session))
        elif "click" in step:
            call("Runtime.evaluate", {"expression": f"document.querySelector({json.dumps(step['click'])}).click()"},
                 session)
            wait_event("Page.loadEventFired", session)
            out["pages"].append(page_text(session))
        elif "check" in step:
            call("Runtime.evaluate",
                 {"expression": f"document.querySelector({json.dumps(step['check'])}).checked = true"}, session)
        elif "until" in step:
            deadline = time.time() + step.get("timeout", 60)
            seen = ""
            while True:
                try:
                    seen = page_text(session)
                except RuntimeError:  # the page is reloading
                    seen = seen
                if step["until"] in seen:
                    out["pages"].append(seen)
                    break
                if time.time() > deadline:
                    raise TimeoutError(f"the page never showed {step['until']!r}: {seen!r}")
                time.sleep(0.5)
        elif "download" in step:
            call("Runtime.evaluate",
                 {"expression": f"document.querySelector({json.dumps(step['download'])}).click()"}, session)
            begin = wait_event("Browser.downloadWillBegin")
            wait_event("Browser.downloadProgress",
                       where=lambda p: p.get("guid") == begin["guid"] and p.get("state") == "completed",
                       timeout=60)
            out["downloads"].append(os.path.join(download_dir, begin["suggestedFilename"]))
except Exception as e:  # reported to the test, which fails with it
    out["error"] = f"{type(e).__name__}: {e}"
finally:
    try:
        call("Browser.close", timeout=5)
    except Exception:
        pass
    proc.kill()
    proc.wait()
print(json.dumps(out))
