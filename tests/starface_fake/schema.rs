//! Checks JSON against the excerpt of the STARFACE spec in
//! testdata/rest/schema.json: every field must be one the spec names, of its type
//! (string, integer, boolean, array of a definition), within its enum, and every
//! required field present. Swagger 2.0 knows no null, so null is never valid.

use serde_json::Value;

use super::testdata;

pub struct Spec {
    pub version: String,
    defs: serde_json::Map<String, Value>,
}

impl Spec {
    pub fn load() -> Spec {
        let text = std::fs::read_to_string(testdata().join("rest").join("schema.json")).unwrap();
        let v: Value = serde_json::from_str(&text).unwrap();
        Spec {
            version: v["spec_version"].as_str().unwrap().to_string(),
            defs: v["definitions"].as_object().unwrap().clone(),
        }
    }

    /// Every way `v` breaks definition `def`, each with its JSON path.
    pub fn check(&self, def: &str, v: &Value) -> Vec<String> {
        let mut errs = Vec::new();
        self.check_at(def, v, "$", &mut errs);
        errs
    }

    /// Like `check` for an array of `def`.
    pub fn check_list(&self, def: &str, v: &Value) -> Vec<String> {
        match v.as_array() {
            Some(items) => items
                .iter()
                .enumerate()
                .flat_map(|(i, item)| {
                    let mut errs = Vec::new();
                    self.check_at(def, item, &format!("$[{i}]"), &mut errs);
                    errs
                })
                .collect(),
            None => vec![format!("$: not an array of {def}")],
        }
    }

    fn check_at(&self, def: &str, v: &Value, path: &str, errs: &mut Vec<String>) {
        let Some(schema) = self.defs.get(def) else {
            errs.push(format!("{path}: no definition {def} in the excerpt"));
            return;
        };
        let Some(obj) = v.as_object() else {
            errs.push(format!("{path}: {def} must be an object"));
            return;
        };
        let props = schema["properties"].as_object().unwrap();
        for req in schema["required"].as_array().unwrap() {
            if !obj.contains_key(req.as_str().unwrap()) {
                errs.push(format!("{path}: {def} lacks required {req}"));
            }
        }
        for (k, val) in obj {
            let at = format!("{path}.{k}");
            let Some(p) = props.get(k) else {
                errs.push(format!("{at}: {def} has no field {k:?}"));
                continue;
            };
            let ok = match p["type"].as_str().unwrap() {
                "string" => val.is_string(),
                "integer" => val.is_i64() || val.is_u64(),
                "boolean" => val.is_boolean(),
                "array" => match val.as_array() {
                    Some(items) => {
                        let item_def = p["items"]["$ref"].as_str().unwrap();
                        for (i, item) in items.iter().enumerate() {
                            self.check_at(item_def, item, &format!("{at}[{i}]"), errs);
                        }
                        true
                    }
                    None => false,
                },
                other => {
                    errs.push(format!("{at}: type {other} not handled"));
                    true
                }
            };
            if !ok {
                errs.push(format!("{at}: {val} is not of type {}", p["type"]));
            }
            if let (Some(allowed), Some(s)) = (p["enum"].as_array(), val.as_str()) {
                if !allowed.iter().any(|a| a == s) {
                    errs.push(format!("{at}: {s:?} is not one of {allowed:?}"));
                }
            }
        }
    }
}
