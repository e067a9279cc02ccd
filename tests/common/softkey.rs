//! A software FIDO authenticator: signs SSH authentication requests in the OpenSSH U2F format
//! (PROTOCOL.u2f) as a security key would, with the user-presence and user-verification flags
//! the test chooses. No hardware key is attached to this machine, so this stands in for one;
//! everything else (the gateway, its verification of the signature) is real.

use std::path::{Path, PathBuf};

use russh::keys::agent::AgentIdentity;
use russh::keys::signature::Signer as _;
use russh::keys::ssh_key::private::{EcdsaKeypair, KeypairData};
use russh::keys::ssh_key::public::{KeyData, SkEcdsaSha2NistP256, SkEd25519};
use russh::keys::ssh_key::{Certificate, PrivateKey, PublicKey};
use sha2::{Digest, Sha256};

use super::rawssh::Accept;
use super::Keypair;

/// User presence (the key was touched).
pub const UP: u8 = 0x01;
/// User verification (PIN or biometrics).
pub const UV: u8 = 0x04;

/// One security key.
pub struct SoftKey {
    private: PrivateKey,
    public: PublicKey,
    application: String,
    /// The flags the next signatures carry.
    pub flags: u8,
    counter: u32,
    /// The public key file (for `ssh-keygen -s`).
    pub pub_file: PathBuf,
}

impl SoftKey {
    /// A security key over a fresh `ed25519` or `ecdsa` key made by ssh-keygen in `dir`.
    pub fn new(dir: &Path, name: &str, kind: &str) -> SoftKey {
        let pair = match kind {
            "ed25519" => Keypair::new(dir, name),
            "ecdsa" => Keypair::of_type(dir, name, &["-t", "ecdsa", "-b", "256"]),
            other => panic!("no security keys of type {other}"),
        };
        let private = russh::keys::load_secret_key(&pair.private, None).unwrap();
        let application = "ssh:".to_owned();
        let data = match private.key_data() {
            KeypairData::Ed25519(k) => {
                KeyData::SkEd25519(SkEd25519::new(k.public, application.clone()))
            }
            KeypairData::Ecdsa(EcdsaKeypair::NistP256 { public, .. }) => {
                KeyData::SkEcdsaSha2NistP256(SkEcdsaSha2NistP256::new(*public, application.clone()))
            }
            _ => unreachable!(),
        };
        let public = PublicKey::new(data, name);
        let file = dir.join(format!("{name}-sk.pub"));
        std::fs::write(&file, public.to_openssh().unwrap()).unwrap();
        SoftKey {
            private,
            public,
            application,
            flags: UP,
            counter: 0,
            pub_file: file,
        }
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    /// The `authorized_keys` line.
    pub fn line(&self) -> String {
        self.public.to_openssh().unwrap()
    }

    /// The security key's signature over `data`: the authenticator signs
    /// SHA-256(application) ‖ flags ‖ counter ‖ SHA-256(data).
    fn sign(&mut self, data: &[u8]) -> Vec<u8> {
        self.counter += 1;
        let mut signed = Sha256::digest(self.application.as_bytes()).to_vec();
        signed.push(self.flags);
        signed.extend(self.counter.to_be_bytes());
        signed.extend(Sha256::digest(data));
        let inner = self.private.try_sign(&signed).unwrap();
        let name = self.public.algorithm().to_string();
        let mut blob = Vec::new();
        put_string(&mut blob, name.as_bytes());
        // ed25519: the 64 signature bytes; ECDSA: the (mpint r, mpint s) blob.
        put_string(&mut blob, inner.as_bytes());
        blob.push(self.flags);
        blob.extend(self.counter.to_be_bytes());
        blob
    }
}

fn put_string(out: &mut Vec<u8>, s: &[u8]) {
    out.extend((s.len() as u32).to_be_bytes());
    out.extend(s);
}

impl russh::Signer for SoftKey {
    type Error = russh::SendError;

    async fn auth_sign(
        &mut self,
        _key: &AgentIdentity,
        _hash_alg: Option<russh::keys::HashAlg>,
        to_sign: Vec<u8>,
    ) -> Result<Vec<u8>, Self::Error> {
        // russh hands over the whole userauth request to sign and takes it back with the
        // signature appended, as an agent does.
        let sig = self.sign(&to_sign);
        let mut out = to_sign;
        put_string(&mut out, &sig);
        Ok(out)
    }
}

/// Signs in with `key` (or its `cert`) on a fresh connection; `Ok` with the session handle.
pub async fn login(
    port: u16,
    key: &mut SoftKey,
    cert: Option<&Certificate>,
) -> Result<russh::client::Handle<Accept>, russh::client::AuthResult> {
    let mut h = super::rawssh::connect(port).await;
    let r = match cert {
        Some(c) => h
            .authenticate_certificate_with("tester", c.clone(), None, key)
            .await
            .unwrap(),
        None => {
            let public = key.public.clone();
            h.authenticate_publickey_with("tester", public, None, key)
                .await
                .unwrap()
        }
    };
    if r.success() {
        Ok(h)
    } else {
        Err(r)
    }
}

/// Runs `command` on a signed-in connection and returns its stdout.
pub async fn exec(h: &russh::client::Handle<Accept>, command: &str) -> String {
    let mut ch = h.channel_open_session().await.unwrap();
    ch.exec(true, command).await.unwrap();
    let mut out = Vec::new();
    while let Some(msg) = ch.wait().await {
        match msg {
            russh::ChannelMsg::Data { data } => out.extend_from_slice(&data),
            russh::ChannelMsg::Eof | russh::ChannelMsg::Close => break,
            _ => {}
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
