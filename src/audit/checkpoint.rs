//! Signed checkpoints of the log's Merkle tree: the C2SP `tlog-checkpoint` text (origin,
//! tree size, base64 root hash) in a C2SP `signed-note` with an Ed25519 signature, as
//! Certificate Transparency logs, Go's checksum database and Sigstore publish them.
//!
//! The key is a note private key (`PRIVATE+KEY+<name>+<key id>+<base64>`); its name is the
//! checkpoints' origin, so a checkpoint names the log it belongs to. An auditor keeps the
//! verifier key (`<name>+<key id>+<base64>`, `GET /api/v1/audit/public-key`) and every
//! checkpoint they were shown.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context;
use base64::Engine;
use signed_note::{Note, Signer as _, StandardSigner, StandardVerifier, VerifierList};
use tlog_tiles::{Checkpoint, Hash};

/// The key file generated in the data dir when `[audit] signing_key` is unset.
pub const DEFAULT_KEY_FILE: &str = "audit-signing.key";

/// Ed25519 algorithm byte of note keys.
const ALG_ED25519: u8 = 1;

/// The checkpoint signer.
pub struct CheckpointSigner {
    signer: StandardSigner,
    verifier_key: String,
}

impl std::fmt::Debug for CheckpointSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("CheckpointSigner")
            .field("verifier_key", &self.verifier_key)
            .finish()
    }
}

/// Generates a note key pair named `name`: `(private key, verifier key)`.
pub fn generate_key(name: &str) -> anyhow::Result<(String, String)> {
    anyhow::ensure!(
        signed_note::is_key_name_valid(name),
        "a key name must be non-empty, without spaces or '+': {name:?}"
    );
    let seed: [u8; 32] = rand::random();
    let key = ed25519_dalek::SigningKey::from_bytes(&seed);
    let public = [&[ALG_ED25519], key.verifying_key().to_bytes().as_slice()].concat();
    let private = [&[ALG_ED25519], key.to_bytes().as_slice()].concat();
    let skey = format!(
        "PRIVATE+KEY+{name}+{:08x}+{}",
        signed_note::key_id(name, &public),
        base64::engine::general_purpose::STANDARD.encode(private)
    );
    let vkey = signed_note::new_ed25519_verifier_key(name, &key.verifying_key());
    Ok((skey, vkey))
}

/// Writes a new private key to `path` (mode 0600), refusing to overwrite one.
pub fn write_new_key(path: &Path, name: &str) -> anyhow::Result<String> {
    let (skey, vkey) = generate_key(name)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("creating the signing key {}", path.display()))?;
    f.write_all(skey.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    Ok(vkey)
}

impl CheckpointSigner {
    pub fn from_private_key(skey: &str) -> anyhow::Result<Self> {
        let signer = StandardSigner::new(skey.trim())
            .map_err(|e| anyhow::anyhow!("not a note private key ({e})"))?;
        // The verifier key is derived from the private key, never stored beside it.
        // `PRIVATE+KEY+<name>+<id>+<base64>`: the name has no '+', the base64 may.
        let b64 = skey.trim().splitn(5, '+').nth(4).unwrap_or_default();
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("the signing key's base64")?;
        let seed: [u8; 32] = raw
            .get(1..)
            .and_then(|s| s.try_into().ok())
            .context("the signing key is not an Ed25519 note key")?;
        let key = ed25519_dalek::SigningKey::from_bytes(&seed);
        let verifier_key =
            signed_note::new_ed25519_verifier_key(signer.name(), &key.verifying_key());
        Ok(Self {
            signer,
            verifier_key,
        })
    }

    /// Loads `configured`, or the data dir's key (generating it on first use, with a
    /// warning: a key beside the log it signs proves less than one kept elsewhere).
    pub fn load(
        configured: Option<&Path>,
        data_dir: &Path,
        origin: Option<&str>,
    ) -> anyhow::Result<Self> {
        let path: PathBuf = match configured {
            Some(p) => p.to_path_buf(),
            None => {
                let p = data_dir.join(DEFAULT_KEY_FILE);
                if !p.exists() {
                    let name = match origin {
                        Some(o) => o.to_string(),
                        None => format!("inferno/{}", hex::encode(rand::random::<[u8; 8]>())),
                    };
                    std::fs::create_dir_all(data_dir)?;
                    write_new_key(&p, &name)?;
                    tracing::warn!(
                        path = %p.display(),
                        "generated the audit checkpoint signing key inside the data dir: anyone \
                         who can rewrite the log can also sign for it; set [audit] signing_key \
                         to a key kept elsewhere (inferno audit keygen)"
                    );
                }
                p
            }
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading the audit signing key {}", path.display()))?;
        Self::from_private_key(&text)
            .with_context(|| format!("the audit signing key {}", path.display()))
    }

    /// The checkpoints' origin line (the key's name).
    pub fn origin(&self) -> &str {
        self.signer.name()
    }

    /// The note verifier key: `<name>+<key id>+<base64>`.
    pub fn verifier_key(&self) -> &str {
        &self.verifier_key
    }

    /// The key id, 8 hex digits.
    pub fn key_id(&self) -> String {
        format!("{:08x}", self.signer.key_id())
    }

    /// The signed note of the checkpoint `(size, root)`.
    pub fn sign(&self, size: u64, root: Hash) -> anyhow::Result<String> {
        let cp = Checkpoint::new(self.origin(), size, root, "")
            .map_err(|e| anyhow::anyhow!("checkpoint: {e}"))?;
        let mut note = Note::new(&cp.to_bytes(), &[]).map_err(|e| anyhow::anyhow!("{e}"))?;
        note.add_sigs(&[&self.signer])
            .map_err(|e| anyhow::anyhow!("signing the checkpoint: {e}"))?;
        String::from_utf8(note.to_bytes()).context("note is UTF-8")
    }
}

/// A checkpoint whose signature was checked.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedCheckpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// Checks `note`'s signature with the verifier key and parses its checkpoint; the origin
/// must be the key's name.
pub fn verify_checkpoint(note: &str, verifier_key: &str) -> Result<VerifiedCheckpoint, String> {
    let verifier = StandardVerifier::new(verifier_key.trim())
        .map_err(|e| format!("not a note verifier key ({e})"))?;
    let name = signed_note::Verifier::name(&verifier).to_string();
    let note = Note::from_bytes(note.as_bytes()).map_err(|e| format!("not a signed note ({e})"))?;
    note.verify(&VerifierList::new(vec![Box::new(verifier)]))
        .map_err(|e| format!("the checkpoint's signature does not verify with this key ({e})"))?;
    let cp = Checkpoint::from_bytes(note.text()).map_err(|e| format!("not a checkpoint ({e})"))?;
    if cp.origin() != name {
        return Err(format!(
            "the checkpoint's origin {:?} is not the key's name {name:?}",
            cp.origin()
        ));
    }
    Ok(VerifiedCheckpoint {
        origin: cp.origin().to_string(),
        size: cp.size(),
        root: *cp.hash(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_with_its_key_only() {
        // Base64 holds '+' now and then: many keys load.
        for _ in 0..64 {
            let (skey, vkey) = generate_key("inferno/t").unwrap();
            assert_eq!(
                CheckpointSigner::from_private_key(&skey)
                    .unwrap()
                    .verifier_key(),
                vkey
            );
        }
        let (skey, vkey) = generate_key("inferno/test").unwrap();
        let signer = CheckpointSigner::from_private_key(&skey).unwrap();
        assert_eq!(signer.verifier_key(), vkey);
        let root = tlog_tiles::record_hash(b"x");
        let note = signer.sign(7, root).unwrap();
        assert!(note.starts_with("inferno/test\n7\n"), "{note}");
        let cp = verify_checkpoint(&note, &vkey).unwrap();
        assert_eq!((cp.size, cp.root), (7, root));

        let (_, other) = generate_key("inferno/test").unwrap();
        assert!(verify_checkpoint(&note, &other).is_err());
        let forged = note.replacen("\n7\n", "\n8\n", 1);
        assert!(verify_checkpoint(&forged, &vkey).is_err());
    }
}
