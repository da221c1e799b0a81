//! Claiming a checkpoint's tensors: which rule claims each name, under which prefix.

use crate::error::{Error, Result};
use crate::read::Checkpoint;
use crate::rules::Rules;

/// A tensor claimed by a rule.
#[derive(Debug, Clone)]
pub struct Claim {
    pub name: String,
    /// Index into `rules.tensors`.
    pub rule: usize,
    pub layer: Option<usize>,
}

type Claimed = (String, Vec<Claim>, Vec<String>);

/// A tensor two rules claim: its name and the two rules' indices.
type ClaimedTwice = (String, usize, usize);

pub(super) fn claim(checkpoint: &Checkpoint, rules: &Rules) -> Result<Claimed> {
    // The claims under each prefix, and the first tensor two rules claim there.
    let mut best: Option<(Claimed, Option<ClaimedTwice>)> = None;
    for prefix in &rules.prefixes {
        let patterns = rules.patterns(prefix);
        let mut claims = Vec::new();
        let mut unclaimed = Vec::new();
        let mut twice = None;
        for name in checkpoint.tensors().keys() {
            let mut hits = patterns.iter().enumerate().filter_map(|(index, pattern)| {
                let layer = pattern.layer_of(name)?;
                Some(Claim {
                    name: name.clone(),
                    rule: index,
                    layer,
                })
            });
            match (hits.next(), hits.next()) {
                (Some(first), second) => {
                    if let Some(second) = second {
                        twice.get_or_insert((name.clone(), first.rule, second.rule));
                    }
                    claims.push(first);
                }
                (None, _) => unclaimed.push(name.clone()),
            }
        }
        let better = best
            .as_ref()
            .is_none_or(|((_, b, _), _)| claims.len() > b.len());
        if better {
            best = Some(((prefix.clone(), claims, unclaimed), twice));
        }
    }
    let Some((claimed, twice)) = best else {
        return Err(Error::RuleFile {
            file: rules.name.clone(),
            message: "no prefixes".into(),
        });
    };
    if let Some((tensor, a, b)) = twice {
        let template = |i: usize| {
            rules
                .tensors
                .get(i)
                .map(|r| r.template.clone())
                .unwrap_or_default()
        };
        return Err(Error::RuleFile {
            file: rules
                .source
                .as_ref()
                .map_or_else(|| rules.name.clone(), |p| p.display().to_string()),
            message: format!(
                "tensor `{tensor}` is claimed by two rules, `{}` and `{}`: each tensor needs exactly one",
                template(a),
                template(b)
            ),
        });
    }
    Ok(claimed)
}
