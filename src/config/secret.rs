//! A secret value: given inline, or read from a file (`{file: …}`), and never printed.

use std::path::PathBuf;

use serde::Deserialize;

/// A string that never appears in debug output or logs: given inline, or `{file: /path}`.
#[derive(Clone)]
pub struct Secret(String);

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FromFile {
            file: PathBuf,
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Form {
            Inline(String),
            File(FromFile),
        }
        match Form::deserialize(d).map_err(|_| {
            serde::de::Error::custom("a secret is a string or {file: /path/to/secret}")
        })? {
            Form::Inline(s) => Ok(Secret(s)),
            Form::File(FromFile { file }) => {
                let mut text = std::fs::read_to_string(&file).map_err(|e| {
                    serde::de::Error::custom(format!(
                        "cannot read secret file {}: {e}",
                        file.display()
                    ))
                })?;
                if text.ends_with('\n') {
                    text.pop();
                    if text.ends_with('\r') {
                        text.pop();
                    }
                }
                Ok(Secret(text))
            }
        }
    }
}

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}
