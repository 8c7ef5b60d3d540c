//! Config-file keys that the chart documents and renders before the Rust
//! config types have them: `routes`, `services` (multi-service routing),
//! `lb.tls` and `lb.h2c` (protocols). Those types are being written in
//! parallel; until they land, `roster schema --helm` adds these hand-written
//! sub-schemas to `config:`, so the chart's values are checked the same way
//! (closed objects, typed fields). A key the generated schema already has
//! is left alone: once the types exist, they win and this is a no-op.

use serde_json::{Value, json};

/// A service name (the id rules of `POST /register`).
const SERVICE_PATTERN: &str = r"^[A-Za-z0-9._-]{1,253}$";
/// A humantime duration as the config file takes it ("5s", "1m 30s").
const DURATION_PATTERN: &str = r"^\s*[0-9]+\s*[a-zµ]+(\s*[0-9]+\s*[a-zµ]+)*\s*$";
/// `host:port` or `[v6]:port`.
const LISTEN_PATTERN: &str = r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):[0-9]{1,5}$";

fn duration() -> Value {
    json!({"type": "string", "pattern": DURATION_PATTERN})
}

fn routes() -> Value {
    json!({
        "description": "Routes: the first whose host and path prefix match picks the service (hand-written until the config types have it).",
        "type": "array",
        "items": {
            "type": "object",
            "additionalProperties": false,
            "required": ["service"],
            "properties": {
                "host": {"description": "Host header to match (no port); empty or absent: any.", "type": "string",
                         "pattern": r"^(\*\.)?[A-Za-z0-9.-]*$"},
                "path_prefix": {"description": "Path prefix to match; absent: /.", "type": "string", "pattern": "^/"},
                "service": {"type": "string", "pattern": SERVICE_PATTERN}
            }
        }
    })
}

fn services() -> Value {
    json!({
        "description": "Per-service settings by service name; unset keys take the top-level ones (hand-written until the config types have it).",
        "type": "object",
        "propertyNames": {"pattern": SERVICE_PATTERN},
        "additionalProperties": {
            "type": "object",
            "additionalProperties": false,
            "properties": {
                "algorithm": {"$ref": "#/$defs/Algorithm"},
                "hash_header": {"type": "string", "pattern": r"^[A-Za-z0-9-]+$"},
                "panic_threshold": {"type": "number", "minimum": 0, "maximum": 100},
                "health_check": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "path": {"type": "string", "pattern": "^/"},
                        "interval": duration(),
                        "timeout": duration()
                    }
                },
                "retries": {"type": "integer", "minimum": 0, "maximum": 10},
                "protocol": {"enum": ["http1", "h2c", "auto"]}
            }
        }
    })
}

fn tls() -> Value {
    json!({
        "description": "TLS listener (hand-written until the config types have it); the chart fills it from lb.tls.secretName.",
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "listen": {"type": "string", "pattern": LISTEN_PATTERN},
            "certs": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "required": ["cert_file", "key_file"],
                    "properties": {
                        "cert_file": {"type": "string", "minLength": 1},
                        "key_file": {"type": "string", "minLength": 1}
                    }
                }
            }
        }
    })
}

/// Add each pending key to its definition when the generated schema lacks it.
pub fn add_pending(schema: &mut Value) {
    let add = |schema: &mut Value, def: &str, key: &str, sub: Value| {
        if let Some(props) = schema
            .pointer_mut(&format!("/$defs/{def}/properties"))
            .and_then(Value::as_object_mut)
        {
            props.entry(key).or_insert(sub);
        }
    };
    add(schema, "Config", "routes", routes());
    add(schema, "Config", "services", services());
    add(schema, "LbConfig", "tls", tls());
    add(
        schema,
        "LbConfig",
        "h2c",
        json!({"description": "h2c (HTTP/2 prior knowledge) on lb.listen.", "type": "boolean"}),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pending_keys_are_added_once_and_never_override() {
        let mut schema = json!({"$defs": {
            "Config": {"properties": {"lb": {}}},
            "LbConfig": {"properties": {"h2c": {"type": "boolean", "description": "generated"}}}
        }});
        add_pending(&mut schema);
        let config = &schema["$defs"]["Config"]["properties"];
        assert_eq!(config["routes"]["type"], "array");
        assert_eq!(config["services"]["type"], "object");
        let lb = &schema["$defs"]["LbConfig"]["properties"];
        assert_eq!(lb["tls"]["properties"]["certs"]["type"], "array");
        assert_eq!(lb["h2c"]["description"], "generated", "the types win");
    }
}
