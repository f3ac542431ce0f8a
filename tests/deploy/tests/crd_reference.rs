//! docs/reference/voicepipeline.md is the CRD reference, generated from the schema in crds/
//! (whose descriptions are the Rust types' `///` docs). This test fails when the document
//! drifts from the schema; `make docs` (UPDATE_DOCS=1) rewrites it.

use std::fmt::Write as _;

use serde_yaml::Value;
use test_support::repo_root;

const CRD: &str = "crds/voice.workflow.io_voicepipelines.yaml";
const DOC: &str = "docs/reference/voicepipeline.md";

fn one_line(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .replace('|', "\\|")
}

fn scalar(value: &Value) -> String {
    match value {
        Value::String(s) => format!("`{s:?}`"),
        Value::Null => String::new(),
        // Schema bounds come back as floats (`8000.0`); a reader wants `8000`.
        Value::Number(n)
            if n.as_f64()
                .is_some_and(|f| f.fract() == 0.0 && f.abs() < 1e15) =>
        {
            format!("`{}`", n.as_f64().unwrap() as i64)
        }
        other => format!("`{}`", serde_json::to_string(other).unwrap_or_default()),
    }
}

/// The type of a schema node as a reader wants it: `string`, `[]object`, `map[string]string`.
fn type_of(schema: &Value) -> String {
    match schema["type"].as_str() {
        Some("array") => format!("[]{}", type_of(&schema["items"])),
        Some("object") if !schema["additionalProperties"].is_null() => {
            format!("map[string]{}", type_of(&schema["additionalProperties"]))
        }
        Some(t) => t.to_string(),
        None if schema["x-kubernetes-int-or-string"].as_bool() == Some(true) => {
            "int-or-string".into()
        }
        None if schema["x-kubernetes-preserve-unknown-fields"].as_bool() == Some(true) => {
            "any".into()
        }
        None => "object".into(),
    }
}

/// Constraints a user must satisfy, from the schema's validation keywords and CEL rules.
fn constraints(schema: &Value) -> String {
    let mut out = Vec::new();
    for (key, label) in [
        ("minimum", "≥"),
        ("maximum", "≤"),
        ("minLength", "min length"),
        ("maxLength", "max length"),
        ("minItems", "min items"),
        ("maxItems", "max items"),
        ("pattern", "pattern"),
        ("format", "format"),
    ] {
        if !schema[key].is_null() {
            out.push(format!("{label} {}", scalar(&schema[key])));
        }
    }
    if let Some(values) = schema["enum"].as_sequence() {
        out.push(format!(
            "one of {}",
            values.iter().map(scalar).collect::<Vec<_>>().join(", ")
        ));
    }
    if let Some(rules) = schema["x-kubernetes-validations"].as_sequence() {
        for rule in rules {
            let message = rule["message"]
                .as_str()
                .unwrap_or_else(|| rule["rule"].as_str().unwrap_or(""));
            out.push(one_line(message));
        }
    }
    out.join("; ")
}

fn walk(out: &mut String, path: &str, schema: &Value, required: &[String]) {
    let Some(properties) = schema["properties"].as_mapping() else {
        return;
    };
    for (name, child) in properties {
        let name = name.as_str().unwrap();
        let field = format!("{path}.{name}");
        let req = if required.iter().any(|r| r == name) {
            "yes"
        } else {
            ""
        };
        // An object's default is the sum of its fields' defaults, listed with them.
        let default = if child["properties"].is_null() {
            scalar(&child["default"])
        } else {
            String::new()
        };
        writeln!(
            out,
            "| `{field}` | {} | {req} | {} | {} | {} |",
            type_of(child),
            default,
            one_line(child["description"].as_str().unwrap_or("")),
            constraints(child),
        )
        .unwrap();
        let inner = if child["type"].as_str() == Some("array") {
            &child["items"]
        } else {
            child
        };
        let inner_required: Vec<String> = inner["required"]
            .as_sequence()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        let suffix = if child["type"].as_str() == Some("array") {
            "[]"
        } else {
            ""
        };
        walk(out, &format!("{field}{suffix}"), inner, &inner_required);
    }
}

fn render(crd: &Value) -> String {
    let version = &crd["spec"]["versions"][0];
    let schema = &version["schema"]["openAPIV3Schema"];
    let mut out = String::new();
    writeln!(out, "# VoicePipeline reference\n").unwrap();
    writeln!(
        out,
        "Generated from `{CRD}` (`make docs`); do not edit by hand. `kubectl explain voicepipeline.spec \
         --recursive` shows the same descriptions in a cluster.\n"
    )
    .unwrap();
    writeln!(
        out,
        "- Group `{}`, version `{}`, kind `{}`, {}, short names: {}.\n",
        crd["spec"]["group"].as_str().unwrap_or(""),
        version["name"].as_str().unwrap_or(""),
        crd["spec"]["names"]["kind"].as_str().unwrap_or(""),
        crd["spec"]["scope"].as_str().unwrap_or("").to_lowercase(),
        crd["spec"]["names"]["shortNames"]
            .as_sequence()
            .map(|s| s
                .iter()
                .map(|n| format!("`{}`", n.as_str().unwrap_or("")))
                .collect::<Vec<_>>()
                .join(", "))
            .unwrap_or_default(),
    )
    .unwrap();
    if let Some(rules) = schema["properties"]["spec"]["x-kubernetes-validations"].as_sequence() {
        writeln!(out, "Rules across fields, checked at `kubectl apply`:\n").unwrap();
        for rule in rules {
            writeln!(
                out,
                "- {}",
                one_line(rule["message"].as_str().unwrap_or(""))
            )
            .unwrap();
        }
        writeln!(out).unwrap();
    }
    if let Some(columns) = version["additionalPrinterColumns"].as_sequence() {
        writeln!(
            out,
            "## `kubectl get vp` columns\n\n| column | shows |\n|---|---|"
        )
        .unwrap();
        for c in columns {
            let wide = if c["priority"].as_i64().unwrap_or(0) > 0 {
                " (with `-o wide`)"
            } else {
                ""
            };
            writeln!(
                out,
                "| {} | {}{wide} |",
                c["name"].as_str().unwrap_or(""),
                one_line(c["description"].as_str().unwrap_or("age"))
            )
            .unwrap();
        }
        writeln!(out).unwrap();
    }
    for part in ["spec", "status"] {
        writeln!(
            out,
            "## {part}\n\n{}\n\n| field | type | required | default | description | constraints |\n|---|---|---|---|---|---|",
            one_line(schema["properties"][part]["description"].as_str().unwrap_or(""))
        )
        .unwrap();
        let required: Vec<String> = schema["properties"][part]["required"]
            .as_sequence()
            .map(|r| {
                r.iter()
                    .filter_map(|v| v.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default();
        walk(&mut out, part, &schema["properties"][part], &required);
        writeln!(out).unwrap();
    }
    out
}

#[test]
fn the_crd_reference_matches_the_schema() {
    let root = repo_root();
    let crd: Value =
        serde_yaml::from_str(&std::fs::read_to_string(root.join(CRD)).unwrap()).unwrap();
    let rendered = render(&crd);
    assert!(
        rendered.contains("`spec.llm.url`"),
        "the reference lost the LLM endpoint field"
    );
    let path = root.join(DOC);
    if std::env::var_os("UPDATE_DOCS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, &rendered).unwrap();
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == rendered,
        "{DOC} is stale: run `make docs` and commit it"
    );
}
