//! Private keys at rest: sealed with ChaCha20-Poly1305 under a 32-byte key kept outside the
//! state directory, and written with mode 0600.
//!
//! A sealed file is PEM labelled `POSTERN SEALED KEY` holding `version(1) || nonce(12) ||
//! ciphertext || tag(16)`. The additional data is the slot name (for example
//! `org/acme/gateway-client-ca`), so a sealed key moved into another slot does not open.

use std::fmt;
use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

use super::PkiError;

const LABEL: &str = "POSTERN SEALED KEY";
const FORMAT_VERSION: u8 = 1;
const KEY_LEN: usize = 32;

/// The key that seals authority private keys. Its `Debug` never shows the key.
#[derive(Clone)]
pub struct SealingKey {
    bytes: [u8; KEY_LEN],
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

impl SealingKey {
    /// A fresh random key.
    pub fn generate() -> Result<Self, PkiError> {
        let mut bytes = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| PkiError::Crypto("system random generator failed".into()))?;
        Ok(Self { bytes })
    }

    /// Parses 64 hex digits (surrounding whitespace ignored), the form `to_hex` writes.
    pub fn from_hex(text: &str) -> Result<Self, PkiError> {
        let text = text.trim();
        let bad = || {
            PkiError::SealingKey(format!(
                "expected 64 hex digits, got {} characters",
                text.len()
            ))
        };
        if text.len() != KEY_LEN * 2 || !text.is_ascii() {
            return Err(bad());
        }
        let mut bytes = [0u8; KEY_LEN];
        for (i, out) in bytes.iter_mut().enumerate() {
            *out = u8::from_str_radix(&text[i * 2..i * 2 + 2], 16).map_err(|_| bad())?;
        }
        Ok(Self { bytes })
    }

    /// Reads the key from a file holding its hex form.
    pub fn from_file(path: &Path) -> Result<Self, PkiError> {
        let text =
            fs::read_to_string(path).map_err(|e| PkiError::io("read sealing key", path, e))?;
        Self::from_hex(&text)
    }

    /// The key as 64 hex digits, for writing to a key file.
    pub fn to_hex(&self) -> String {
        self.bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn aead(&self) -> Result<LessSafeKey, PkiError> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, &self.bytes)
            .map_err(|_| PkiError::Crypto("cannot build ChaCha20-Poly1305 key".into()))?;
        Ok(LessSafeKey::new(key))
    }

    /// Encrypts `plain` for `slot` and returns the PEM text.
    pub fn seal(&self, slot: &str, plain: &[u8]) -> Result<String, PkiError> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| PkiError::Crypto("system random generator failed".into()))?;
        let mut body = plain.to_vec();
        self.aead()?
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(slot),
                &mut body,
            )
            .map_err(|_| PkiError::Crypto("sealing failed".into()))?;
        let mut contents = Vec::with_capacity(1 + NONCE_LEN + body.len());
        contents.push(FORMAT_VERSION);
        contents.extend_from_slice(&nonce);
        contents.extend_from_slice(&body);
        Ok(pem::encode(&pem::Pem::new(LABEL, contents)))
    }

    /// Decrypts PEM text written by `seal` for the same `slot`.
    pub fn open(&self, slot: &str, pem_text: &str) -> Result<Vec<u8>, PkiError> {
        let parsed = pem::parse(pem_text)
            .map_err(|e| PkiError::Format(format!("sealed key for {slot}: {e}")))?;
        if parsed.tag() != LABEL {
            return Err(PkiError::Format(format!(
                "sealed key for {slot}: expected PEM label {LABEL:?}, found {:?}",
                parsed.tag()
            )));
        }
        let contents = parsed.contents();
        let (version, rest) = contents
            .split_first()
            .ok_or_else(|| PkiError::Format(format!("sealed key for {slot} is empty")))?;
        if *version != FORMAT_VERSION || rest.len() < NONCE_LEN {
            return Err(PkiError::Format(format!(
                "sealed key for {slot}: expected format {FORMAT_VERSION}, found {version} ({} bytes)",
                rest.len()
            )));
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce)
            .map_err(|_| PkiError::Crypto("bad nonce length".into()))?;
        let mut body = sealed.to_vec();
        let plain = self
            .aead()?
            .open_in_place(nonce, Aad::from(slot), &mut body)
            .map_err(|_| PkiError::WrongSealingKey {
                slot: slot.to_owned(),
            })?;
        Ok(plain.to_vec())
    }
}

/// Writes `contents` to `path` with mode 0600, atomically (temporary file, then rename).
pub fn write_private(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_with_mode(path, contents, 0o600)
}

/// Writes `contents` to `path` with mode 0644, atomically.
pub fn write_public(path: &Path, contents: &[u8]) -> Result<(), PkiError> {
    write_with_mode(path, contents, 0o644)
}

fn write_with_mode(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| PkiError::io("create", &tmp, e))?;
    file.write_all(contents)
        .map_err(|e| PkiError::io("write", &tmp, e))?;
    file.sync_all().map_err(|e| PkiError::io("sync", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| PkiError::io("rename into place", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trips() {
        let key = SealingKey::generate().unwrap();
        let pem = key.seal("instance/x", b"secret").unwrap();
        assert!(!pem.contains("secret"));
        assert_eq!(key.open("instance/x", &pem).unwrap(), b"secret");
    }

    #[test]
    fn reject_other_sealing_key() {
        let pem = SealingKey::generate().unwrap().seal("s", b"k").unwrap();
        let other = SealingKey::generate().unwrap();
        assert!(matches!(
            other.open("s", &pem),
            Err(PkiError::WrongSealingKey { .. })
        ));
    }

    #[test]
    fn reject_key_moved_to_other_slot() {
        let key = SealingKey::generate().unwrap();
        let pem = key.seal("org/a/gateway-client-ca", b"k").unwrap();
        assert!(matches!(
            key.open("org/b/gateway-client-ca", &pem),
            Err(PkiError::WrongSealingKey { .. })
        ));
    }

    #[test]
    fn hex_round_trips_and_debug_is_masked() {
        let key = SealingKey::generate().unwrap();
        let back = SealingKey::from_hex(&format!(" {}\n", key.to_hex())).unwrap();
        assert_eq!(back.bytes, key.bytes);
        assert!(!format!("{key:?}").contains(&key.to_hex()[..8]));
        assert!(SealingKey::from_hex("abcd").is_err());
        assert!(SealingKey::from_hex(&"zz".repeat(32)).is_err());
    }
}
