//! A Hugging Face `config.json`, read once as a JSON object for the architecture readers
//! ([`crate::hf::read_config`], [`crate::neox::read_config`], [`crate::ModelConfig::read`]).

use std::path::Path as FsPath;

use serde_json::{Map, Value};

use crate::ModelError;

/// The JSON object in `path`; an unreadable file, invalid JSON or a non-object is an error
/// naming the file.
pub(crate) fn read_object(path: &FsPath) -> Result<Map<String, Value>, ModelError> {
    let bad = |message: String| ModelError::BadConfigFile {
        path: path.to_owned(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|error| ModelError::Io {
        path: path.to_owned(),
        error,
    })?;
    match serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))? {
        Value::Object(obj) => Ok(obj),
        _ => Err(bad("expected a JSON object".into())),
    }
}
