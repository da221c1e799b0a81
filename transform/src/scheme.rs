//! Width and depth schemes: partitions of the large model's units (heads, layers) into the
//! small model's units (docs/operator-contract.md §2).

use std::str::FromStr;

use crate::error::{Error, Result};

/// The most heads, key/value heads or layers a model may have (units are tabulated, so an
/// absurd count would exhaust memory instead of failing cleanly).
pub const MAX_UNITS: usize = 1 << 16;

/// How to group units, before the sizes are known.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SchemeSpec {
    /// Small unit i takes large units i, i + m, i + 2m, ... (m = small count).
    Strided,
    /// Small unit i takes large units i·k .. i·k + k − 1 (k = group size).
    Adjacent,
    /// Group i lists the large units that form small unit i (the reference's format).
    Explicit(Vec<Vec<usize>>),
    /// Equal groups of the most similar units of the large checkpoint
    /// ([`crate::similar`]); planned from a checkpoint, never from sizes alone.
    Similar,
}

/// A scheme reads back from what it serialises to (`"strided"`, `{"explicit": [[0, 2], [1, 3]]}`)
/// and from the text form the command line takes (`"[[0,2],[1,3]]"`).
impl<'de> serde::Deserialize<'de> for SchemeSpec {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Form {
            Text(String),
            Explicit { explicit: Vec<Vec<usize>> },
        }
        match Form::deserialize(deserializer)? {
            Form::Text(text) => text.parse().map_err(serde::de::Error::custom),
            Form::Explicit { explicit } => Ok(SchemeSpec::Explicit(explicit)),
        }
    }
}

impl FromStr for SchemeSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s.trim() {
            "strided" => Ok(SchemeSpec::Strided),
            "adjacent" => Ok(SchemeSpec::Adjacent),
            "similar" => Ok(SchemeSpec::Similar),
            json if json.starts_with('[') => serde_json::from_str::<Vec<Vec<usize>>>(json)
                .map(SchemeSpec::Explicit)
                .map_err(|e| {
                    format!(
                        "`{json}` is not a list of groups of unit indices like [[0,2],[1,3]]: {e}"
                    )
                }),
            other => Err(format!(
                "`{other}` is not `strided`, `adjacent`, `similar` or JSON groups like [[0,2],[1,3]]"
            )),
        }
    }
}

impl std::fmt::Display for SchemeSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SchemeSpec::Strided => write!(f, "strided"),
            SchemeSpec::Adjacent => write!(f, "adjacent"),
            SchemeSpec::Similar => write!(f, "similar"),
            SchemeSpec::Explicit(groups) => write!(f, "{}", format_groups(groups)),
        }
    }
}

/// A validated partition of `large` units into `groups.len()` small units.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Grouping {
    /// `groups[i]` = the large units merged into small unit i, in the order given.
    groups: Vec<Vec<usize>>,
    /// `owner[u]` = the small unit that large unit u belongs to.
    #[serde(skip)]
    owner: Vec<usize>,
}

impl Grouping {
    /// Builds and validates the grouping of `large` units into `small` units.
    pub fn new(spec: &SchemeSpec, large: usize, small: usize, what: &'static str) -> Result<Self> {
        let err = |reason: String| Error::Scheme { what, reason };
        if small == 0 || large == 0 {
            return Err(err(format!(
                "cannot group {large} {what} units into {small}"
            )));
        }
        if small > large {
            return Err(err(format!(
                "the small model cannot have more {what} units ({small}) than the large one ({large})"
            )));
        }
        if large > MAX_UNITS {
            return Err(err(format!(
                "{large} {what} units are more than the {MAX_UNITS} vcycle supports"
            )));
        }
        let groups = match spec {
            SchemeSpec::Strided | SchemeSpec::Adjacent => {
                if !large.is_multiple_of(small) {
                    return Err(err(format!(
                        "{large} {what} units do not divide into {small} equal groups; give explicit groups for an unequal split"
                    )));
                }
                let k = large / small;
                (0..small)
                    .map(|i| match spec {
                        SchemeSpec::Strided => (0..k).map(|j| i + j * small).collect(),
                        _ => (i * k..(i + 1) * k).collect(),
                    })
                    .collect()
            }
            SchemeSpec::Explicit(groups) => groups.clone(),
            SchemeSpec::Similar => {
                return Err(err(
                    "`similar` groups are chosen from a checkpoint's weights, not from sizes alone"
                        .into(),
                ));
            }
        };
        Grouping::from_groups(groups, large, small, what)
    }

    /// Validates explicit groups: `small` non-empty groups covering 0..large exactly once.
    pub fn from_groups(
        groups: Vec<Vec<usize>>,
        large: usize,
        small: usize,
        what: &'static str,
    ) -> Result<Self> {
        let err = |reason: String| Error::Scheme { what, reason };
        if large > MAX_UNITS {
            return Err(err(format!(
                "{large} {what} units are more than the {MAX_UNITS} vcycle supports"
            )));
        }
        if groups.len() != small {
            return Err(err(format!(
                "{} groups given, but the small model has {small} {what} units",
                groups.len()
            )));
        }
        let mut owner = vec![usize::MAX; large];
        for (i, group) in groups.iter().enumerate() {
            if group.is_empty() {
                return Err(err(format!("group {i} is empty")));
            }
            for &u in group {
                let Some(slot) = owner.get_mut(u) else {
                    return Err(err(format!(
                        "unit {u} in group {i} is out of range: the large model has {large} {what} units (0..{})",
                        large.saturating_sub(1)
                    )));
                };
                if *slot != usize::MAX {
                    return Err(err(format!(
                        "unit {u} appears more than once (groups {} and {i})",
                        *slot
                    )));
                }
                *slot = i;
            }
        }
        if let Some(missing) = owner.iter().position(|&o| o == usize::MAX) {
            return Err(err(format!("unit {missing} is in no group")));
        }
        Ok(Grouping { groups, owner })
    }

    /// The identity grouping (unit i ↔ unit i).
    pub fn identity(n: usize) -> Self {
        Grouping {
            groups: (0..n).map(|i| vec![i]).collect(),
            owner: (0..n).collect(),
        }
    }

    /// The groups: small unit i is the mean of the large units `groups()[i]`.
    pub fn groups(&self) -> &[Vec<usize>] {
        &self.groups
    }

    /// Number of units in the large model.
    pub fn large(&self) -> usize {
        self.owner.len()
    }

    /// Number of units in the small model.
    pub fn small(&self) -> usize {
        self.groups.len()
    }

    /// The small unit a large unit belongs to (0 for a unit out of range).
    pub fn owner(&self, large_unit: usize) -> usize {
        self.owner.get(large_unit).copied().unwrap_or(0)
    }

    /// Whether every unit is its own group (nothing changes).
    pub fn is_identity(&self) -> bool {
        self.groups.len() == self.owner.len()
            && self.groups.iter().enumerate().all(|(i, g)| g == &[i])
    }

    /// Whether every group has the same size (the condition for exact function preservation).
    pub fn is_equal(&self) -> bool {
        self.groups.windows(2).all(|w| w[0].len() == w[1].len())
    }

    /// The element-level grouping when every unit is a block of `block` consecutive elements:
    /// small element i·block + r takes large elements u·block + r for u in group i.
    pub fn expand(&self, block: usize) -> Grouping {
        let groups = self
            .groups
            .iter()
            .flat_map(|g| (0..block).map(move |r| g.iter().map(|&u| u * block + r).collect()))
            .collect();
        Grouping::with_owners(groups, self.large() * block)
    }

    /// The query-head grouping induced by a kv-head grouping (docs/operator-contract.md §3, GQA): with `r` query
    /// heads per kv head, query head r·t + j of the small model merges query heads r·u + j for
    /// the kv heads u of group t.
    pub fn induce_queries(&self, r: usize) -> Grouping {
        let groups = self
            .groups
            .iter()
            .flat_map(|g| (0..r).map(move |j| g.iter().map(|&u| u * r + j).collect()))
            .collect();
        Grouping::with_owners(groups, self.large() * r)
    }

    /// Builds the owner table of groups derived from a valid grouping (so already a partition
    /// of `0..large`).
    fn with_owners(groups: Vec<Vec<usize>>, large: usize) -> Grouping {
        let mut owner = vec![0; large];
        for (i, g) in groups.iter().enumerate() {
            for &u in g {
                if let Some(slot) = owner.get_mut(u) {
                    *slot = i;
                }
            }
        }
        Grouping { groups, owner }
    }
}

/// `[[0,2],[1,3]]`, the reference's format.
pub fn format_groups(groups: &[Vec<usize>]) -> String {
    let inner: Vec<String> = groups
        .iter()
        .map(|g| {
            let items: Vec<String> = g.iter().map(usize::to_string).collect();
            format!("[{}]", items.join(","))
        })
        .collect();
    format!("[{}]", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn groups(spec: &str, large: usize, small: usize) -> Result<Vec<Vec<usize>>> {
        let spec: SchemeSpec = spec.parse().map_err(|reason| Error::Scheme {
            what: "test",
            reason,
        })?;
        Grouping::new(&spec, large, small, "head").map(|g| g.groups().to_vec())
    }

    #[test]
    fn strided_is_the_references_default() {
        let g = groups("strided", 12, 6).unwrap_or_default();
        assert_eq!(g[0], vec![0, 6]);
        assert_eq!(g[5], vec![5, 11]);
    }

    #[test]
    fn adjacent_pairs_neighbours() {
        assert_eq!(
            groups("adjacent", 6, 3).unwrap_or_default(),
            vec![vec![0, 1], vec![2, 3], vec![4, 5]]
        );
    }

    #[test]
    fn explicit_groups_are_validated() {
        assert!(groups("[[0,2],[1,3]]", 4, 2).is_ok());
        let msg = |r: Result<Vec<Vec<usize>>>| r.map(|_| ()).unwrap_err().to_string();
        assert!(msg(groups("[[0,2],[1,2]]", 4, 2)).contains("unit 2 appears more than once"));
        assert!(msg(groups("[[0,2],[1]]", 4, 2)).contains("unit 3 is in no group"));
        assert!(msg(groups("[[0,9],[1,2,3]]", 4, 2)).contains("unit 9 in group 0 is out of range"));
        assert!(msg(groups("[[0,1,2,3]]", 4, 2)).contains("1 groups given"));
        assert!(msg(groups("[[0,1],[]]", 2, 2)).contains("group 1 is empty"));
        assert!(msg(groups("strided", 12, 5)).contains("do not divide"));
        assert!(msg(groups("strided", 4, 8)).contains("cannot have more"));
        assert!("[[0,1],[x]]".parse::<SchemeSpec>().is_err());
        assert!("diagonal".parse::<SchemeSpec>().is_err());
    }

    #[test]
    fn unequal_explicit_groups_are_allowed_but_flagged() {
        let spec = SchemeSpec::Explicit(vec![vec![0, 1, 2], vec![3, 4]]);
        let g = Grouping::new(&spec, 5, 2, "head");
        assert!(g.as_ref().is_ok_and(|g| !g.is_equal()));
    }

    #[test]
    fn gqa_kv_groups_induce_query_groups() {
        // 4 kv heads, 2 query heads each; kv groups [[0,2],[1,3]].
        let kv = Grouping::new(&SchemeSpec::Strided, 4, 2, "kv head");
        let q = kv
            .map(|kv| kv.induce_queries(2).groups().to_vec())
            .unwrap_or_default();
        assert_eq!(q, vec![vec![0, 4], vec![1, 5], vec![2, 6], vec![3, 7]]);
    }

    fn partition() -> impl Strategy<Value = (Vec<Vec<usize>>, usize)> {
        (1usize..6, 1usize..5).prop_flat_map(|(small, k)| {
            let large = small * k;
            Just((0..large).collect::<Vec<_>>())
                .prop_shuffle()
                .prop_map(move |perm| (perm.chunks(k).map(<[usize]>::to_vec).collect(), large))
        })
    }

    proptest! {
        #[test]
        fn every_permuted_partition_is_accepted_and_inverted((groups, large) in partition(), block in 1usize..4) {
            let small = groups.len();
            let g = Grouping::from_groups(groups.clone(), large, small, "head");
            prop_assert!(g.is_ok());
            let g = g.unwrap_or_else(|_| Grouping::identity(1));
            for (i, group) in groups.iter().enumerate() {
                for &u in group {
                    prop_assert_eq!(g.owner(u), i);
                }
            }
            let e = g.expand(block);
            prop_assert_eq!(e.large(), large * block);
            prop_assert_eq!(e.small(), small * block);
            for i in 0..e.small() {
                for &u in &e.groups()[i] {
                    prop_assert_eq!(e.owner(u), i);
                    prop_assert_eq!(u % block, i % block);
                }
            }
        }
    }
}
