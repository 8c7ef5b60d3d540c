//! Every key of the config file, read from its JSON Schema (`roster
//! schema`): path, type, default and description, grouped by section.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// One key: `lb.proxy_limits.header_timeout`, `routes[].host`,
/// `services.<name>.retries`.
#[derive(Debug, Clone)]
pub struct Key {
    pub path: String,
    /// The key as written in its section (`header_timeout`).
    pub name: String,
    /// Markdown: `integer`, `[duration](#durations)`, one of `a`, `b`...
    pub ty: String,
    pub default: Option<Value>,
    pub description: String,
    /// The section this key opens (its own table), if it is one.
    pub opens: Option<String>,
}

/// A mapping in the file: `lb`, `lb.tls`, `routes[]`, `services.<name>`.
#[derive(Debug, Clone)]
pub struct Section {
    pub path: String,
    pub description: String,
    pub keys: Vec<Key>,
}

/// An enumeration's values and what each means.
pub type Values = Vec<(String, String)>;

/// The file's keys.
#[derive(Debug, Default)]
pub struct Keys {
    /// In the order met, depth first from the top-level keys.
    pub sections: Vec<Section>,
    /// Enumerations by type name.
    pub enums: BTreeMap<String, Values>,
    /// The paths where a named type (a `$defs` entry) is a section:
    /// `ProxyLimits` -> `lb.proxy_limits`.
    pub def_paths: BTreeMap<String, Vec<String>>,
}

impl Keys {
    /// Walk `schema` (the JSON Schema of the whole file); `defaults` is the
    /// file's `Default` serialized, where defaults are looked up first.
    pub fn from_schema(schema: &Value, defaults: &Value) -> Self {
        let empty = Map::new();
        let defs = schema
            .get("$defs")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut walk = Walk {
            defs,
            defaults,
            keys: Keys::default(),
        };
        walk.section("", schema, None);
        walk.keys
    }

    /// The key at `path`.
    pub fn get(&self, path: &str) -> Option<&Key> {
        self.sections
            .iter()
            .flat_map(|s| s.keys.iter())
            .find(|k| k.path == path)
    }

    /// The section at `path`.
    pub fn section(&self, path: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.path == path)
    }
}

struct Walk<'a> {
    defs: &'a Map<String, Value>,
    defaults: &'a Value,
    keys: Keys,
}

/// A schema node with `$ref` followed and a lone non-null `anyOf`/`oneOf`
/// alternative taken (an `Option`).
struct Resolved<'a> {
    node: &'a Value,
    def: Option<String>,
    optional: bool,
}

impl<'a> Walk<'a> {
    fn resolve(&self, mut node: &'a Value) -> Resolved<'a> {
        let mut def = None;
        let mut optional = false;
        loop {
            if let Some(name) = ref_name(node) {
                match self.defs.get(name) {
                    Some(d) => {
                        def = Some(name.to_string());
                        node = d;
                        continue;
                    }
                    None => break,
                }
            }
            let alternatives = alternatives(node);
            let real: Vec<&Value> = alternatives
                .iter()
                .copied()
                .filter(|a| !is_null(a))
                .collect();
            if !alternatives.is_empty() && real.len() == 1 && alternatives.len() == 2 {
                optional = true;
                node = real[0];
                continue;
            }
            if types(node).contains(&"null") {
                optional = true;
            }
            break;
        }
        Resolved {
            node,
            def,
            optional,
        }
    }

    /// The mapping at `path` (its own table), then the sections below it.
    fn section(&mut self, path: &str, node: &'a Value, def: Option<&str>) {
        let r = self.resolve(node);
        let description = text(node).or_else(|| text(r.node)).unwrap_or_default();
        if let Some(def) = def.or(r.def.as_deref()) {
            let paths = self.keys.def_paths.entry(def.to_string()).or_default();
            paths.push(path.to_string());
        }
        let index = self.keys.sections.len();
        self.keys.sections.push(Section {
            path: path.to_string(),
            description,
            keys: Vec::new(),
        });
        let props = r.node.get("properties").and_then(Value::as_object);
        let mut below = Vec::new();
        for (name, child) in props.into_iter().flatten() {
            let key_path = join(path, name);
            let key = self.key(&key_path, name, child);
            if let Some((open, node, def)) = self.opens(&key_path, child) {
                below.push((open, node, def));
            }
            self.keys.sections[index].keys.push(key);
        }
        for (open, node, def) in below {
            self.section(&open, node, def.as_deref());
        }
    }

    /// The section a key opens: a mapping of its own, the items of a list
    /// of mappings (`routes[]`), the entries of a map (`services.<name>`),
    /// or the mapping form of a key that also takes a scalar (`tls`).
    fn opens(&self, path: &str, node: &'a Value) -> Option<(String, &'a Value, Option<String>)> {
        let r = self.resolve(node);
        if r.node.get("properties").is_some() {
            return Some((path.to_string(), node, r.def));
        }
        if let Some(items) = r.node.get("items") {
            let i = self.resolve(items);
            if i.node.get("properties").is_some() {
                return Some((format!("{path}[]"), items, i.def));
            }
        }
        if let Some(entry) = r.node.get("additionalProperties").filter(|v| v.is_object()) {
            let e = self.resolve(entry);
            if e.node.get("properties").is_some() {
                return Some((format!("{path}.<name>"), entry, e.def));
            }
        }
        alternatives(r.node).into_iter().find_map(|a| {
            let a = self.resolve(a);
            a.node
                .get("properties")
                .is_some()
                .then(|| (path.to_string(), a.node, a.def))
        })
    }

    fn key(&mut self, path: &str, name: &str, node: &'a Value) -> Key {
        let r = self.resolve(node);
        let opens = self.opens(path, node).map(|(p, _, _)| p);
        let default = lookup(self.defaults, path)
            .cloned()
            .or_else(|| node.get("default").cloned());
        let mut ty = self.ty(node);
        if r.optional {
            ty.push_str(", optional");
        }
        Key {
            path: path.to_string(),
            name: name.to_string(),
            ty,
            default,
            description: text(node).or_else(|| text(r.node)).unwrap_or_default(),
            opens,
        }
    }

    /// A type, in words.
    fn ty(&mut self, node: &'a Value) -> String {
        let r = self.resolve(node);
        let node = r.node;
        if let Some(values) = enum_values(node) {
            let names: Vec<String> = values.iter().map(|(v, _)| format!("`{v}`")).collect();
            if let Some(def) = r.def {
                self.keys.enums.insert(def, values);
            }
            return format!("one of {}", names.join(", "));
        }
        let alts = alternatives(node);
        if !alts.is_empty() {
            let words: Vec<String> = alts
                .into_iter()
                .filter(|a| !is_null(a))
                .map(|a| self.ty(a))
                .collect();
            return words.join(" or ");
        }
        let kinds: Vec<&str> = types(node).into_iter().filter(|t| *t != "null").collect();
        match kinds.first().copied().unwrap_or("any") {
            "string" if is_duration(node) => "[duration](#durations)".into(),
            "array" => match node.get("items") {
                Some(items) => format!("list of {}", self.ty(items)),
                None => "list".into(),
            },
            "object"
                if node
                    .get("additionalProperties")
                    .is_some_and(Value::is_object) =>
            {
                "map of name to mapping".into()
            }
            "object" => "mapping".into(),
            kind => kind.into(),
        }
    }
}

fn ref_name(node: &Value) -> Option<&str> {
    node.get("$ref")?.as_str()?.strip_prefix("#/$defs/")
}

fn alternatives(node: &Value) -> Vec<&Value> {
    ["anyOf", "oneOf"]
        .iter()
        .filter_map(|k| node.get(*k).and_then(Value::as_array))
        .flatten()
        .collect()
}

fn types(node: &Value) -> Vec<&str> {
    match node.get("type") {
        Some(Value::String(t)) => vec![t.as_str()],
        Some(Value::Array(ts)) => ts.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

fn is_null(node: &Value) -> bool {
    types(node) == ["null"]
}

fn is_duration(node: &Value) -> bool {
    node.get("pattern").and_then(Value::as_str) == Some(&crate::config::duration_pattern())
}

/// `oneOf` of string constants (with their docs), or a plain `enum`.
fn enum_values(node: &Value) -> Option<Values> {
    if let Some(values) = node.get("enum").and_then(Value::as_array) {
        return values
            .iter()
            .map(|v| v.as_str().map(|s| (s.to_string(), String::new())))
            .collect();
    }
    let alts = node.get("oneOf").and_then(Value::as_array)?;
    alts.iter()
        .map(|a| {
            let value = a.get("const").or_else(|| {
                a.get("enum")
                    .and_then(Value::as_array)
                    .and_then(|e| e.first())
            })?;
            Some((value.as_str()?.to_string(), text(a).unwrap_or_default()))
        })
        .collect()
}

/// A description on one line.
pub fn text(node: &Value) -> Option<String> {
    let d = node.get("description")?.as_str()?;
    Some(d.split_whitespace().collect::<Vec<_>>().join(" "))
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_string()
    } else {
        format!("{path}.{name}")
    }
}

/// `lb.tls.listen` in the serialized defaults.
fn lookup<'v>(value: &'v Value, path: &str) -> Option<&'v Value> {
    path.split('.').try_fold(value, |v, part| v.get(part))
}
