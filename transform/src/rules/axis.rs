//! The axes of a tensor as rule files write them: model spaces, directions, fixed axes.

/// A model space that width changes act on (docs/operator-contract.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Space {
    /// The residual stream, d_model; grouped in `heads` blocks that follow the head grouping.
    Hidden,
    /// Query (and, without GQA, key/value) outputs: heads × head_dim, grouped by head.
    Attn,
    /// GQA key/value outputs: kv_heads × head_dim, grouped by kv head.
    Kv,
    /// The FFN's intermediate size, grouped in `heads` blocks that follow the head grouping.
    Ffn,
}

impl Space {
    /// The space's name in a rule file (`hidden`, `attn`, `kv`, `ffn`).
    pub fn name(self) -> &'static str {
        match self {
            Space::Hidden => "hidden",
            Space::Attn => "attn",
            Space::Kv => "kv",
            Space::Ffn => "ffn",
        }
    }

    fn parse(s: &str) -> Option<Space> {
        Some(match s {
            "hidden" => Space::Hidden,
            "attn" => Space::Attn,
            "kv" => Space::Kv,
            "ffn" => Space::Ffn,
            _ => return None,
        })
    }
}

/// Whether a tensor produces values in a space (`out`) or consumes them (`in`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// Rows of a Linear weight, biases, norm parameters, embedding columns: averaged when
    /// coalescing, duplicated when de-coalescing.
    Out,
    /// Columns of a Linear weight: summed when coalescing, split evenly when de-coalescing.
    In,
}

/// What one axis of a tensor is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Axis {
    /// Never changed by a width transformation: vocabulary, positions, classes, channels, ...
    /// `name` is the fixed space (sizes are checked for consistency across tensors); a literal
    /// size such as `1` is written as its number.
    Fixed(String),
    /// One or more model spaces concatenated along this axis (GPT-2's fused `c_attn` is
    /// `attn+attn+attn`), all in one direction.
    Model {
        /// The spaces, in order along the axis.
        parts: Vec<Space>,
        /// Whether the axis is a projection's input (`in`) or output (`out`).
        dir: Direction,
    },
}

impl Axis {
    pub(super) fn parse(text: &str) -> std::result::Result<Axis, String> {
        let Some((spaces, dir)) = text.split_once(':') else {
            if text.is_empty() || !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!(
                    "axis `{text}` is neither `SPACE:DIR` nor a fixed name"
                ));
            }
            if Space::parse(text).is_some() {
                return Err(format!(
                    "axis `{text}` names a model space without a direction: write `{text}:out` or `{text}:in`"
                ));
            }
            return Ok(Axis::Fixed(text.to_string()));
        };
        let dir = match dir {
            "out" => Direction::Out,
            "in" => Direction::In,
            other => {
                return Err(format!(
                    "axis `{text}`: direction `{other}` is not `out` or `in`"
                ));
            }
        };
        let parts = spaces
            .split('+')
            .map(|s| {
                Space::parse(s).ok_or_else(|| {
                    format!("axis `{text}`: `{s}` is not a model space (hidden, attn, kv, ffn)")
                })
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        Ok(Axis::Model { parts, dir })
    }

    /// The axis with its direction replaced (used by the embedding rule).
    pub fn with_direction(&self, dir: Direction) -> Axis {
        match self {
            Axis::Model { parts, .. } => Axis::Model {
                parts: parts.clone(),
                dir,
            },
            fixed => fixed.clone(),
        }
    }
}

impl std::fmt::Display for Axis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Axis::Fixed(name) => write!(f, "{name}"),
            Axis::Model { parts, dir } => {
                let names: Vec<&str> = parts.iter().map(|p| p.name()).collect();
                let dir = match dir {
                    Direction::Out => "out",
                    Direction::In => "in",
                };
                write!(f, "{}:{dir}", names.join("+"))
            }
        }
    }
}
