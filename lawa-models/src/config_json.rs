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

/// The fields of a `config.json`, read with errors that name the file, the field and its value.
pub(crate) struct ConfigFields<'a> {
    path: &'a FsPath,
    obj: Map<String, Value>,
}

impl<'a> ConfigFields<'a> {
    /// Reads `path` (see [`read_object`]).
    pub(crate) fn read(path: &'a FsPath) -> Result<Self, ModelError> {
        Ok(ConfigFields {
            path,
            obj: read_object(path)?,
        })
    }

    /// The raw value of `field`.
    pub(crate) fn get(&self, field: &str) -> Option<&Value> {
        self.obj.get(field)
    }

    /// An error about this file.
    pub(crate) fn bad(&self, message: String) -> ModelError {
        ModelError::BadConfigFile {
            path: self.path.to_owned(),
            message,
        }
    }

    /// A whole number, `None` when the field is missing or null.
    pub(crate) fn size(&self, field: &str) -> Result<Option<usize>, ModelError> {
        match self.obj.get(field) {
            Some(Value::Null) => Ok(None),
            _ => self.whole_number(field),
        }
    }

    /// A whole number, `None` when the field is missing; `null` is refused like any other
    /// value that is not one.
    pub(crate) fn whole_number(&self, field: &str) -> Result<Option<usize>, ModelError> {
        match self.obj.get(field) {
            None => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| self.bad(format!("{field} = {v}: expected a whole number"))),
        }
    }

    /// A whole number that must be there (missing or null: missing).
    pub(crate) fn required(&self, field: &str) -> Result<usize, ModelError> {
        self.size(field)?
            .ok_or_else(|| self.bad(format!("field {field} is missing")))
    }

    /// A whole number that must be there, `null` refused as not one.
    pub(crate) fn required_strict(&self, field: &str) -> Result<usize, ModelError> {
        self.whole_number(field)?
            .ok_or_else(|| self.bad(format!("field {field} is missing")))
    }

    /// A number, `default` when the field is missing or null.
    pub(crate) fn number(&self, field: &str, default: f64) -> Result<f64, ModelError> {
        self.number_at(self.obj.get(field), field, default)
    }

    /// The number `value` found at `field` (a nested one, e.g. `rope_parameters.rope_theta`),
    /// `default` when missing or null.
    pub(crate) fn number_at(
        &self,
        value: Option<&Value>,
        field: &str,
        default: f64,
    ) -> Result<f64, ModelError> {
        match value {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| self.bad(format!("{field} = {v}: expected a number"))),
        }
    }

    /// `true` or `false`, `default` when the field is missing or null.
    pub(crate) fn flag(&self, field: &str, default: bool) -> Result<bool, ModelError> {
        match self.obj.get(field) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.bad(format!("{field} = {v}: expected true or false"))),
        }
    }

    /// A string field, `None` when missing or not a string.
    pub(crate) fn text(&self, field: &str) -> Option<&str> {
        self.obj.get(field).and_then(Value::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(json: &str, test: impl FnOnce(&ConfigFields)) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, json).unwrap();
        test(&ConfigFields::read(&path).unwrap());
    }

    #[test]
    fn null_reads_as_missing_or_is_refused_as_asked() {
        fields(r#"{"a": null, "b": 3, "c": 2.5, "f": null}"#, |f| {
            assert_eq!(f.size("a").unwrap(), None);
            assert_eq!(f.size("b").unwrap(), Some(3));
            assert_eq!(f.size("z").unwrap(), None);
            let e = f.whole_number("a").unwrap_err().to_string();
            assert!(e.contains("a = null: expected a whole number"), "{e}");
            let e = f.size("c").unwrap_err().to_string();
            assert!(e.contains("c = 2.5: expected a whole number"), "{e}");
            let e = f.required("a").unwrap_err().to_string();
            assert!(e.contains("field a is missing"), "{e}");
            let e = f.required_strict("a").unwrap_err().to_string();
            assert!(e.contains("a = null"), "{e}");
            assert_eq!(f.required_strict("b").unwrap(), 3);
            assert_eq!(f.number("f", 0.5).unwrap(), 0.5);
            assert_eq!(f.number("c", 0.5).unwrap(), 2.5);
            assert!(f
                .flag("b", true)
                .unwrap_err()
                .to_string()
                .contains("expected true or false"));
        });
    }
}
