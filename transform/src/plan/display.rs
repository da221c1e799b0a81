//! The plan as text: what `--dry-run` prints and the snapshot tests pin.

use std::fmt;

use super::{DepthInit, DepthOp, Operator, Plan};

impl fmt::Display for Plan {
    /// One line per output tensor: name, dtype and shape, sources, depth and axis operations.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "operator: {}", self.operator)?;
        if !self.arch.is_empty() {
            writeln!(f, "architecture: {}", self.arch)?;
        }
        if let Some(rule) = self.embedding_rule {
            writeln!(
                f,
                "embedding rule: {}",
                serde_json::to_value(rule)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )?;
        }
        if let (Some(from), Some(to)) = (&self.from, &self.to) {
            writeln!(
                f,
                "sizes: layers {} -> {}, hidden {} -> {}, heads {} -> {}, kv heads {} -> {}, head size {}, ffn {} -> {}",
                from.layers,
                to.layers,
                from.hidden,
                to.hidden,
                from.heads,
                to.heads,
                from.kv_heads,
                to.kv_heads,
                from.head_dim,
                from.ffn,
                to.ffn
            )?;
        }
        if let Some(g) = &self.head_groups {
            writeln!(
                f,
                "head groups: {}",
                crate::scheme::format_groups(g.groups())
            )?;
        }
        if let Some(g) = &self.kv_head_groups {
            writeln!(
                f,
                "kv head groups: {}",
                crate::scheme::format_groups(g.groups())
            )?;
        }
        if let Some(g) = &self.layer_groups {
            writeln!(
                f,
                "layer groups: {}",
                crate::scheme::format_groups(g.groups())
            )?;
        }
        let width = if self.kv_head_groups.is_some() {
            "kv head"
        } else {
            "head"
        };
        let similar = [(width, self.similar_heads), ("layer", self.similar_layers)];
        for (what, cost) in similar {
            if let Some(c) = cost {
                writeln!(
                    f,
                    "similar {what} groups: merge cost {:.4e} (strided: {:.4e})",
                    c.chosen, c.strided
                )?;
            }
        }
        if self.depth_init == Some(DepthInit::Zero) {
            writeln!(
                f,
                "depth init: zero (added layers get zero attention-output and FFN-down weights)"
            )?;
        }
        if self.unequal_groups {
            writeln!(
                f,
                "warning: unequal groups; the result is not function preserving"
            )?;
        }
        writeln!(f, "tensors: {}", self.tensors.len())?;
        for t in &self.tensors {
            let shape: Vec<String> = t.shape.iter().map(usize::to_string).collect();
            write!(
                f,
                "{} {}[{}] <- ",
                t.name,
                crate::dtype::name(t.dtype),
                shape.join(", ")
            )?;
            if let ([single], DepthOp::Zero) = (t.sources.as_slice(), t.depth) {
                write!(f, "zeros (added layer, instead of {single})")?;
            } else if let [single] = t.sources.as_slice() {
                write!(f, "{single}")?;
            } else {
                write!(
                    f,
                    "{}({})",
                    match t.depth {
                        DepthOp::Mean => "mean",
                        _ => "first",
                    },
                    t.sources.join(", ")
                )?;
            }
            let ops: Vec<String> = t
                .axes
                .iter()
                .enumerate()
                .filter_map(|(i, a)| {
                    a.op.map(|op| format!("{i}:{} {} {}->{}", a.axis, op.name(), a.from, a.to))
                })
                .collect();
            if !ops.is_empty() {
                write!(f, " | {}", ops.join("; "))?;
            }
            if let (Some(with), Operator::Interpolate { alpha } | Operator::Grow { alpha }) =
                (&t.interpolate_with, self.operator)
            {
                write!(f, " | lerp({alpha}) with large {with}")?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
