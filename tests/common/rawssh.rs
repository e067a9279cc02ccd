//! A scriptable SSH client on russh's client, for what the OpenSSH client will not do on
//! purpose: opening many channels, stopping mid-protocol, skipping steps, retrying auth forever.
//! It speaks real SSH to the real gateway binary; only its behaviour is hostile.

use std::sync::Arc;
use std::time::Duration;

use russh::client::{self, Handle, KeyboardInteractiveAuthResponse};
use russh::keys::{PrivateKeyWithHashAlg, PublicKeyOrCertificate};

use super::Keypair;

pub struct Accept;

impl client::Handler for Accept {
    type Error = russh::Error;
    async fn check_server_key(&mut self, _: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// Connects (key exchange done, not authenticated).
pub async fn connect(port: u16) -> Handle<Accept> {
    let config = Arc::new(client::Config {
        inactivity_timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    });
    client::connect(config, ("127.0.0.1", port), Accept)
        .await
        .expect("ssh connect")
}

/// Connects and signs in with `key`.
pub async fn signed_in(port: u16, key: &Keypair) -> Handle<Accept> {
    let mut h = connect(port).await;
    let k = russh::keys::load_secret_key(&key.private, None).unwrap();
    let r = h
        .authenticate_publickey(
            "tester",
            PrivateKeyWithHashAlg::new(Arc::new(k), Some(russh::keys::HashAlg::Sha256)),
        )
        .await
        .unwrap();
    assert!(r.success(), "key login: {r:?}");
    h
}

/// Connects and gets admitted to device sign-in (the zero-prompt keyboard-interactive round).
pub async fn pending(port: u16) -> Handle<Accept> {
    let mut h = connect(port).await;
    let mut r = h
        .authenticate_keyboard_interactive_start("tester", None)
        .await
        .unwrap();
    loop {
        match r {
            KeyboardInteractiveAuthResponse::Success => return h,
            KeyboardInteractiveAuthResponse::InfoRequest { .. } => {
                r = h
                    .authenticate_keyboard_interactive_respond(Vec::new())
                    .await
                    .unwrap();
            }
            KeyboardInteractiveAuthResponse::Failure { .. } => panic!("not admitted to sign in"),
        }
    }
}
