//! Keyless credentials: the pod's projected ServiceAccount token traded for
//! temporary keys with STS AssumeRoleWithWebIdentity, as EKS IRSA, MinIO's
//! OpenID providers and other S3-compatible stores offer.
//!
//! Our own, not aws-config's provider: that one refuses a response whose
//! AssumedRoleUser ARN is not an AWS ARN, and MinIO sends an empty one.

use crate::names::{ROLE_ARN_ENV, SESSION_NAME_ENV, STS_ENDPOINT_ENV, TOKEN_FILE_ENV};
use aws_credential_types::provider::{self, ProvideCredentials};
use aws_sdk_s3::config::Credentials;

#[derive(Debug)]
pub struct WebIdentity {
    sts: aws_sdk_sts::Client,
    token_file: std::path::PathBuf,
    role_arn: String,
    session_name: String,
}

impl WebIdentity {
    /// The web identity the environment names, if it names one. STS is
    /// reached as `config` says (region, CA bundle); where: at
    /// AWS_ENDPOINT_URL_STS if set, else at the store's own endpoint (an
    /// S3-compatible store serves STS there), else AWS's.
    pub fn from_env(config: &aws_config::SdkConfig, store: Option<&str>) -> Option<WebIdentity> {
        let token_file = std::env::var_os(TOKEN_FILE_ENV)?;
        let role_arn = std::env::var(ROLE_ARN_ENV).ok()?;
        let mut sts = aws_sdk_sts::config::Builder::from(config);
        let sts_set = std::env::var(STS_ENDPOINT_ENV).is_ok_and(|e| !e.is_empty());
        if let (false, Some(endpoint)) = (sts_set, store) {
            sts = sts.endpoint_url(endpoint);
        }
        Some(WebIdentity {
            sts: aws_sdk_sts::Client::from_conf(sts.build()),
            token_file: token_file.into(),
            role_arn,
            session_name: std::env::var(SESSION_NAME_ENV)
                .unwrap_or_else(|_| crate::names::MANAGER.to_string()),
        })
    }

    async fn assume(&self) -> provider::Result {
        use provider::error::CredentialsError;
        // Read anew each time: the kubelet rotates the token.
        let token = tokio::fs::read_to_string(&self.token_file)
            .await
            .map_err(|e| {
                CredentialsError::not_loaded(format!(
                    "cannot read the ServiceAccount token {}: {e}",
                    self.token_file.display()
                ))
            })?;
        let out = self
            .sts
            .assume_role_with_web_identity()
            .role_arn(&self.role_arn)
            .role_session_name(&self.session_name)
            .web_identity_token(token.trim())
            .send()
            .await
            .map_err(|e| {
                CredentialsError::provider_error(format!(
                    "AssumeRoleWithWebIdentity for {} refused: {}",
                    self.role_arn,
                    aws_sdk_sts::error::DisplayErrorContext(&e)
                ))
            })?;
        let c = out
            .credentials()
            .ok_or_else(|| CredentialsError::unhandled("STS returned no credentials"))?;
        let expiry = std::time::SystemTime::try_from(*c.expiration()).ok();
        Ok(Credentials::new(
            c.access_key_id(),
            c.secret_access_key(),
            Some(c.session_token().to_string()),
            expiry,
            "WebIdentity",
        ))
    }
}

impl ProvideCredentials for WebIdentity {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(self.assume())
    }
}
