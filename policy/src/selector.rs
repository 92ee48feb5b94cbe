//! Label selectors (`matchLabels` + `matchExpressions`), validated once and then matched many times.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Labels of one object.
pub type Labels = BTreeMap<String, String>;

#[derive(Clone, Debug, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    In(String, BTreeSet<String>),
    NotIn(String, BTreeSet<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A validated label selector. The empty selector matches everything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    reqs: Vec<Requirement>,
}

/// A selector that could not be parsed: `field` is relative to the selector (e.g.
/// `matchExpressions[0].operator`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SelectorError {
    pub field: String,
    pub message: String,
}

impl Selector {
    /// Matches every object (`{}`).
    pub fn everything() -> Self {
        Self::default()
    }

    pub fn parse(sel: &LabelSelector) -> Result<Self, SelectorError> {
        let mut reqs = Vec::new();
        for (k, v) in sel.match_labels.iter().flatten() {
            reqs.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
            let values: BTreeSet<String> = e.values.iter().flatten().cloned().collect();
            let err = |field: &str, message: String| SelectorError {
                field: format!("matchExpressions[{i}].{field}"),
                message,
            };
            if e.key.is_empty() {
                return Err(err("key", "must not be empty".into()));
            }
            let key = e.key.clone();
            let req = match e.operator.as_str() {
                "In" | "NotIn" if values.is_empty() => {
                    return Err(err(
                        "values",
                        format!("must be non-empty for operator {}", e.operator),
                    ));
                }
                "Exists" | "DoesNotExist" if !values.is_empty() => {
                    return Err(err(
                        "values",
                        format!("must be empty for operator {}", e.operator),
                    ));
                }
                "In" => Requirement::In(key, values),
                "NotIn" => Requirement::NotIn(key, values),
                "Exists" => Requirement::Exists(key),
                "DoesNotExist" => Requirement::DoesNotExist(key),
                other => {
                    return Err(err(
                        "operator",
                        format!("unknown operator {other:?} (want In, NotIn, Exists or DoesNotExist)"),
                    ));
                }
            };
            reqs.push(req);
        }
        Ok(Self { reqs })
    }

    pub fn is_everything(&self) -> bool {
        self.reqs.is_empty()
    }

    pub fn matches(&self, labels: &Labels) -> bool {
        self.reqs.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> Labels {
        kv.iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: if values.is_empty() {
                None
            } else {
                Some(values.iter().map(|v| (*v).into()).collect())
            },
        }
    }

    fn sel(ml: &[(&str, &str)], exprs: Vec<LabelSelectorRequirement>) -> Selector {
        Selector::parse(&LabelSelector {
            match_labels: if ml.is_empty() { None } else { Some(labels(ml)) },
            match_expressions: if exprs.is_empty() { None } else { Some(exprs) },
        })
        .unwrap()
    }

    #[test]
    fn empty_selector_matches_everything() {
        let s = sel(&[], vec![]);
        assert!(s.is_everything());
        assert!(s.matches(&labels(&[])));
        assert!(s.matches(&labels(&[("pod", "a")])));
    }

    #[test]
    fn operators() {
        let a = labels(&[("pod", "a"), ("tier", "web")]);
        let b = labels(&[("pod", "b")]);
        let cases: Vec<(Selector, bool, bool)> = vec![
            (sel(&[("pod", "a")], vec![]), true, false),
            (sel(&[("pod", "a"), ("tier", "web")], vec![]), true, false),
            (sel(&[], vec![expr("pod", "In", &["a", "c"])]), true, false),
            (sel(&[], vec![expr("pod", "NotIn", &["a"])]), false, true),
            (sel(&[], vec![expr("tier", "NotIn", &["db"])]), true, true), // absent key satisfies NotIn
            (sel(&[], vec![expr("tier", "Exists", &[])]), true, false),
            (sel(&[], vec![expr("tier", "DoesNotExist", &[])]), false, true),
            (
                sel(&[("pod", "b")], vec![expr("tier", "DoesNotExist", &[])]),
                false,
                true,
            ),
            (
                sel(&[("pod", "a")], vec![expr("tier", "In", &["db"])]),
                false,
                false,
            ), // AND
        ];
        for (i, (s, ma, mb)) in cases.iter().enumerate() {
            assert_eq!(s.matches(&a), *ma, "case {i} on a");
            assert_eq!(s.matches(&b), *mb, "case {i} on b");
        }
    }

    #[test]
    fn invalid_expressions_name_the_field() {
        let bad = |e: LabelSelectorRequirement| {
            Selector::parse(&LabelSelector {
                match_labels: None,
                match_expressions: Some(vec![e]),
            })
            .unwrap_err()
        };
        let e = bad(expr("pod", "Equals", &["a"]));
        assert_eq!(e.field, "matchExpressions[0].operator");
        assert!(e.message.contains("Equals"), "{}", e.message);
        assert_eq!(bad(expr("pod", "In", &[])).field, "matchExpressions[0].values");
        assert_eq!(
            bad(expr("pod", "Exists", &["a"])).field,
            "matchExpressions[0].values"
        );
    }
}
