//! Signed checkpoints: every `audit.checkpoint_interval` (and at shutdown) the writer chains a
//! record that signs the chain's head with the instance's Ed25519 key, and publishes the same
//! line to `audit.checkpoints`, kept where the log's writer cannot rewrite it. A rewritten
//! chain then fails its signatures, and a cut one ends before the last published checkpoint.
//!
//! The key is a `[secret.NAME]` holding base64 of the PKCS#8 DER of the private key, or of
//! its PEM file; its id is the first 16 hex digits of the SHA-256 of its public key's SPKI DER.

use std::fmt;
use std::sync::Arc;

use base64::Engine;
use rcgen::{KeyPair, PKCS_ED25519, PublicKeyData, SigningKey, SubjectPublicKeyInfo};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::Links;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("is not base64 (of the key's PKCS#8 DER, or of its PEM file)")]
    NotBase64,
    #[error("is not a private key (PKCS#8 DER or PEM)")]
    NotAKey,
    #[error("is not an Ed25519 key")]
    NotEd25519,
    #[error("is not a PEM public key (SPKI)")]
    NotAPublicKey,
    #[error("cannot make a key: {0}")]
    Generate(String),
}

/// The instance's signing key. Its `Debug` shows the key id only.
pub struct Signer {
    key: KeyPair,
    pub id: String,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer").field("id", &self.id).finish_non_exhaustive()
    }
}

/// Two signers are the same setting when their keys are (a reload compares settings).
impl PartialEq for Signer {
    fn eq(&self, other: &Signer) -> bool {
        self.id == other.id
    }
}
impl Eq for Signer {}

impl Signer {
    /// From a secret's value: base64 of the PKCS#8 DER, or of the PEM file.
    pub fn from_secret(value: &str) -> Result<Signer, KeyError> {
        let bytes = zeroize::Zeroizing::new(
            base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| KeyError::NotBase64)?,
        );
        let key = if bytes.starts_with(b"-----BEGIN ") {
            let pem = std::str::from_utf8(&bytes).map_err(|_| KeyError::NotAKey)?;
            KeyPair::from_pem(pem).map_err(|_| KeyError::NotAKey)?
        } else {
            KeyPair::try_from(bytes.as_slice()).map_err(|_| KeyError::NotAKey)?
        };
        Signer::new(key)
    }

    fn new(key: KeyPair) -> Result<Signer, KeyError> {
        if key.algorithm() != &PKCS_ED25519 {
            return Err(KeyError::NotEd25519);
        }
        let id = key_id(&key.subject_public_key_info());
        Ok(Signer { key, id })
    }

    /// A new key pair: the signer, its PKCS#8 PEM and its public key's SPKI PEM.
    pub fn generate() -> Result<(Signer, zeroize::Zeroizing<String>, String), KeyError> {
        let key = KeyPair::generate_for(&PKCS_ED25519).map_err(|e| KeyError::Generate(e.to_string()))?;
        let (private, public) = (zeroize::Zeroizing::new(key.serialize_pem()), key.public_key_pem());
        Ok((Signer::new(key)?, private, public))
    }

    fn sign(&self, message: &[u8]) -> String {
        let sig = self.key.sign(message).expect("Ed25519 signing does not fail");
        hex::encode(sig)
    }
}

/// The id of a key: the first 16 hex digits of the SHA-256 of its SPKI DER.
pub fn key_id(spki_der: &[u8]) -> String {
    hex::encode(&Sha256::digest(spki_der)[..8])
}

/// A public key an auditor was given (`audit verify --key`).
#[derive(Debug, Clone)]
pub struct PublicKey {
    pub id: String,
    raw: Vec<u8>,
}

impl PublicKey {
    pub fn from_pem(pem: &str) -> Result<PublicKey, KeyError> {
        let spki = SubjectPublicKeyInfo::from_pem(pem).map_err(|_| KeyError::NotAPublicKey)?;
        if spki.algorithm() != &PKCS_ED25519 {
            return Err(KeyError::NotEd25519);
        }
        Ok(PublicKey { id: key_id(&spki.subject_public_key_info()), raw: spki.der_bytes().to_vec() })
    }

    fn verifies(&self, message: &[u8], signature_hex: &str) -> bool {
        let Ok(sig) = hex::decode(signature_hex) else { return false };
        let algorithms = rustls::crypto::aws_lc_rs::default_provider().signature_verification_algorithms;
        algorithms
            .mapping
            .iter()
            .filter(|(scheme, _)| *scheme == rustls::SignatureScheme::ED25519)
            .flat_map(|(_, algs)| algs.iter())
            .any(|alg| alg.verify_signature(&self.raw, message, &sig).is_ok())
    }
}

/// A checkpoint record (`kind = "checkpoint"`). `head` is the hash of the record before it
/// (its `prev`), named so that a line of the checkpoints file stands on its own.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpoint {
    #[serde(flatten)]
    pub links: Links,
    pub head: String,
    /// The writer's `checkpoint_interval`, in ms: records after the last checkpoint that span
    /// more than it are not an unsigned tail but a forgery.
    pub interval_ms: u64,
    /// The first seq this process wrote: `answered` counts from there.
    pub since_seq: u64,
    /// Requests answered since `since_seq` whose records the chain holds before this one:
    /// one per `request` record, `count` per `refusals` record.
    pub answered: u64,
    /// Requests refused with 503 because the log could not take their record, and folded
    /// refusals that could not be written: answered, and not in the chain.
    pub unrecordable: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl Checkpoint {
    /// What the signature covers: every field but the signature, in a fixed order.
    pub fn message(&self) -> Vec<u8> {
        let l = &self.links;
        format!(
            "keyward audit checkpoint v1\ninstance={}\nseq={}\nhead={}\ntime={}\nkey_id={}\ninterval_ms={}\n\
             since_seq={}\nanswered={}\nunrecordable={}\n",
            l.instance.as_deref().unwrap_or(""),
            l.seq,
            self.head,
            l.time,
            self.key_id.as_deref().unwrap_or(""),
            self.interval_ms,
            self.since_seq,
            self.answered,
            self.unrecordable
        )
        .into_bytes()
    }

    /// Sign it with `signer` (its links set).
    pub fn sign(&mut self, signer: &Signer) {
        self.key_id = Some(signer.id.clone());
        self.signature = Some(signer.sign(&self.message()));
    }

    /// Whether it is signed by one of `keys`: `Err` says why not.
    pub fn check(&self, keys: &[PublicKey]) -> Result<(), String> {
        let (Some(id), Some(sig)) = (&self.key_id, &self.signature) else {
            return Err("it is not signed".into());
        };
        let Some(key) = keys.iter().find(|k| k.id == *id) else {
            return Err(format!("it is signed by key {id}, which is not among the keys given"));
        };
        if !key.verifies(&self.message(), sig) {
            return Err(format!("its signature does not verify under key {id}: it was edited or forged"));
        }
        Ok(())
    }

    pub fn write_json(&self, out: &mut Vec<u8>) {
        serde_json::to_writer(out, self).expect("a checkpoint serialises");
    }
}

/// The signer as the settings carry it.
pub type SharedSigner = Arc<Signer>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_under_its_key_only() {
        let (signer, private, public) = Signer::generate().unwrap();
        let again =
            Signer::from_secret(&base64::engine::general_purpose::STANDARD.encode(private.as_bytes()))
                .unwrap();
        assert_eq!(again.id, signer.id);
        let key = PublicKey::from_pem(&public).unwrap();
        assert_eq!(key.id, signer.id);
        assert_eq!(signer.id.len(), 16);
        assert!(!format!("{signer:?}").contains("PRIVATE"));
        let mut c = Checkpoint { head: "ab".repeat(32), answered: 7, ..Default::default() };
        c.links.seq = 9;
        c.sign(&signer);
        assert_eq!(c.check(std::slice::from_ref(&key)), Ok(()));
        let mut edited = c.clone();
        edited.answered = 8;
        assert!(edited.check(std::slice::from_ref(&key)).unwrap_err().contains("does not verify"));
        let (_, _, other) = Signer::generate().unwrap();
        let other = PublicKey::from_pem(&other).unwrap();
        assert!(c.check(&[other]).unwrap_err().contains("not among the keys given"));
        assert!(Checkpoint::default().check(&[key]).unwrap_err().contains("not signed"));
    }

    #[test]
    fn a_key_of_another_kind_is_refused() {
        let ec = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(ec.serialize_pem());
        assert_eq!(Signer::from_secret(&b64).unwrap_err(), KeyError::NotEd25519);
        assert_eq!(Signer::from_secret("not base64!").unwrap_err(), KeyError::NotBase64);
        assert_eq!(PublicKey::from_pem(&ec.public_key_pem()).unwrap_err(), KeyError::NotEd25519);
        assert_eq!(PublicKey::from_pem("junk").unwrap_err(), KeyError::NotAPublicKey);
    }
}
