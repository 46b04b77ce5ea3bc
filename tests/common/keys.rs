//! KMS keys in the emulator, for the tests and the benchmarks (which
//! include this file by path).

/// A new KMS HMAC key, as a BackupRepository's `spec.integrity.macKeyId`
/// names it, in the account `conf` acts in; its ARN.
pub async fn hmac_key(conf: &aws_config::SdkConfig) -> String {
    let out = aws_sdk_kms::Client::new(conf)
        .create_key()
        .key_spec(aws_sdk_kms::types::KeySpec::Hmac256)
        .key_usage(aws_sdk_kms::types::KeyUsageType::GenerateVerifyMac)
        .description("tender integrity key (tests)")
        .send()
        .await
        .expect("create an HMAC key in the emulator");
    let arn = out.key_metadata().and_then(|m| m.arn());
    arn.expect("a new key has an ARN").to_string()
}
