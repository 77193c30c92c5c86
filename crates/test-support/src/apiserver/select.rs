//! `labelSelector` and `fieldSelector` as k8s.io/apimachinery/pkg/labels and
//! pkg/fields parse and apply them. A field the kind does not index is a 400,
//! as from the real server (each kind's fields are listed in `kinds`).

use super::kinds::Kind;
use super::status::ApiError;
use serde_json::Value;

/// The selectors of one list or watch request.
#[derive(Debug, Default, Clone)]
pub struct Selector {
    labels: Vec<LabelReq>,
    fields: Vec<FieldReq>,
}

#[derive(Debug, Clone)]
enum LabelReq {
    Exists(String),
    NotExists(String),
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Greater(String, i64),
    Less(String, i64),
}

#[derive(Debug, Clone)]
struct FieldReq {
    field: String,
    value: String,
    equal: bool,
}

impl Selector {
    pub fn parse(
        kind: &Kind,
        labels: Option<&str>,
        fields: Option<&str>,
    ) -> Result<Selector, ApiError> {
        Ok(Selector {
            labels: parse_labels(labels.unwrap_or(""))?,
            fields: parse_fields(kind, fields.unwrap_or(""))?,
        })
    }

    pub fn matches(&self, kind: &Kind, obj: &Value) -> bool {
        let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
        let label = |k: &str| labels.and_then(|l| l.get(k)).and_then(Value::as_str);
        let labels_ok = self.labels.iter().all(|r| match r {
            LabelReq::Exists(k) => label(k).is_some(),
            LabelReq::NotExists(k) => label(k).is_none(),
            LabelReq::Equals(k, v) => label(k) == Some(v),
            LabelReq::NotEquals(k, v) => label(k) != Some(v),
            LabelReq::In(k, vs) => label(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            LabelReq::NotIn(k, vs) => label(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            LabelReq::Greater(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l > *n),
            LabelReq::Less(k, n) => label(k)
                .and_then(|l| l.parse::<i64>().ok())
                .is_some_and(|l| l < *n),
        });
        labels_ok
            && self.fields.iter().all(|r| {
                let actual = kind.field_value(obj, &r.field).unwrap_or_default();
                (actual == r.value) == r.equal
            })
    }
}

fn bad_label(selector: &str, why: &str) -> ApiError {
    ApiError::bad_request(format!(
        "unable to parse requirement: {why} (in label selector {selector:?})"
    ))
}

/// Splits on commas outside parentheses: `a in (x,y),b` is two requirements.
fn split_top_level(s: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (vec![], 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_labels(selector: &str) -> Result<Vec<LabelReq>, ApiError> {
    let mut reqs = vec![];
    if selector.trim().is_empty() {
        return Ok(reqs);
    }
    for part in split_top_level(selector) {
        let part = part.trim();
        let key_ok = |k: &str| {
            !k.is_empty()
                && k.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
        };
        let value_ok = |v: &str| {
            v.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        let req = if let Some(key) = part.strip_prefix('!') {
            LabelReq::NotExists(key.trim().to_string())
        } else if let Some((k, v)) = part.split_once("!=") {
            LabelReq::NotEquals(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            LabelReq::Equals(k.trim().to_string(), v.trim().to_string())
        } else if let Some((k, v)) = part.split_once('>') {
            let n = v.trim().parse().map_err(|_| {
                bad_label(
                    selector,
                    "for 'gt', 'lt' operators, the value must be an integer",
                )
            })?;
            LabelReq::Greater(k.trim().to_string(), n)
        } else if let Some((k, v)) = part.split_once('<') {
            let n = v.trim().parse().map_err(|_| {
                bad_label(
                    selector,
                    "for 'gt', 'lt' operators, the value must be an integer",
                )
            })?;
            LabelReq::Less(k.trim().to_string(), n)
        } else if let Some((key, rest)) = part.split_once(char::is_whitespace) {
            let rest = rest.trim_start();
            let (negate, set) = if let Some(set) = rest.strip_prefix("notin") {
                (true, set)
            } else if let Some(set) = rest.strip_prefix("in") {
                (false, set)
            } else {
                return Err(bad_label(
                    selector,
                    &format!("found '{rest}', expected: in, notin, =, ==, !=, gt, lt"),
                ));
            };
            let inner = set
                .trim()
                .strip_prefix('(')
                .and_then(|s| s.strip_suffix(')'))
                .ok_or_else(|| bad_label(selector, "expected a parenthesized set of values"))?;
            let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
            if values.iter().any(|v| !value_ok(v)) {
                return Err(bad_label(selector, "invalid label value"));
            }
            let key = key.trim().to_string();
            if negate {
                LabelReq::NotIn(key, values)
            } else {
                LabelReq::In(key, values)
            }
        } else {
            LabelReq::Exists(part.to_string())
        };
        let (key, value) = match &req {
            LabelReq::Exists(k)
            | LabelReq::NotExists(k)
            | LabelReq::In(k, _)
            | LabelReq::NotIn(k, _) => (k, ""),
            LabelReq::Greater(k, _) | LabelReq::Less(k, _) => (k, ""),
            LabelReq::Equals(k, v) | LabelReq::NotEquals(k, v) => (k, v.as_str()),
        };
        if !key_ok(key) {
            return Err(bad_label(selector, &format!("invalid label key {key:?}")));
        }
        if !value_ok(value) {
            return Err(bad_label(
                selector,
                &format!("invalid label value {value:?}"),
            ));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

/// `a=b,c!=d` with `\` escapes; the field must be one the kind indexes.
fn parse_fields(kind: &Kind, selector: &str) -> Result<Vec<FieldReq>, ApiError> {
    let mut reqs = vec![];
    if selector.trim().is_empty() {
        return Ok(reqs);
    }
    // Split on unescaped commas, then on the first unescaped operator.
    let mut terms = vec![String::new()];
    let mut chars = selector.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                terms.last_mut().unwrap().push('\\');
                terms.last_mut().unwrap().extend(chars.next());
            }
            ',' => terms.push(String::new()),
            c => terms.last_mut().unwrap().push(c),
        }
    }
    for term in terms {
        let (field, value, equal) = if let Some((f, v)) = term.split_once("!=") {
            (f, v, false)
        } else if let Some((f, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            (f, v, true)
        } else {
            return Err(ApiError::bad_request(format!(
                "invalid selector: '{selector}'; can't understand '{term}'"
            )));
        };
        let field = field.trim();
        if !kind.fields.iter().any(|(f, _, _)| *f == field) {
            return Err(ApiError::bad_request(format!(
                "field label not supported: {field}"
            )));
        }
        let mut unescaped = String::new();
        let mut it = value.chars();
        while let Some(c) = it.next() {
            unescaped.extend(if c == '\\' { it.next() } else { Some(c) });
        }
        reqs.push(FieldReq {
            field: field.to_string(),
            value: unescaped,
            equal,
        });
    }
    Ok(reqs)
}
