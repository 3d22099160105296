//! Environment overrides (`MCP_AUTHZ__SECTION__KEY`), applied to the file's tree as data and
//! retyped with the key named in any error.

use serde::de::DeserializeOwned;
use serde_yaml_ng::Value;

use super::error::{ConfigError, ENV_PREFIX};

pub(super) fn env_error(var: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Env {
        var: var.to_owned(),
        reason: reason.into(),
    }
}

/// `MCP_AUTHZ__ENTRA__LEEWAY_SECONDS` → `["entra", "leeway_seconds"]`.
pub(super) fn override_path(var: &str) -> Result<Vec<String>, ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..]
        .split("__")
        .map(|s| s.to_ascii_lowercase())
        .collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(env_error(var, "empty path segment (use KEY__SUBKEY)"));
    }
    Ok(path)
}

/// The config from the tree, where every override was set as a string. Where a key wants
/// something else (a number, a flag, a list), serde names the path of the type error; that
/// override, and only it, is read as YAML and the tree tried again. Each override is retyped
/// at most once, so this ends.
pub(super) fn deserialize_with_overrides<T: DeserializeOwned>(
    mut tree: Value,
    applied: &[(String, String, String)],
) -> Result<T, ConfigError> {
    let mut retyped = std::collections::HashSet::new();
    loop {
        let err = match serde_path_to_error::deserialize::<_, T>(tree.clone()) {
            Ok(config) => return Ok(config),
            Err(err) => err,
        };
        let at = err.path().to_string();
        let Some((var, dotted, raw)) = applied.iter().find(|(_, p, _)| *p == at) else {
            return Err(ConfigError::Invalid(format!("{at}: {}", err.inner())));
        };
        let wants_other_type = err.inner().to_string().starts_with("invalid type: string");
        if !wants_other_type || !retyped.insert(var.as_str()) {
            return Err(env_error(var, err.inner().to_string()));
        }
        let value: Value = serde_yaml_ng::from_str(raw)
            .map_err(|e| env_error(var, format!("not a value of {dotted}'s type: {e}")))?;
        let path: Vec<String> = dotted.split('.').map(str::to_owned).collect();
        set_at(&mut tree, &path, value, var)?;
    }
}

pub(super) fn set_at(
    tree: &mut Value,
    path: &[String],
    value: Value,
    var: &str,
) -> Result<(), ConfigError> {
    let err = |reason: &str| env_error(var, reason);
    let mut node = tree;
    for (i, key) in path.iter().enumerate() {
        if node.is_null() {
            *node = Value::Mapping(Default::default());
        }
        let Value::Mapping(map) = node else {
            return Err(err("overrides a value that is not a section"));
        };
        let k = Value::String(key.clone());
        if i + 1 == path.len() {
            map.insert(k, value);
            return Ok(());
        }
        node = map.entry(k).or_insert(Value::Null);
    }
    Ok(())
}
