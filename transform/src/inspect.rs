//! The `inspect` report: what a checkpoint is, as its rules see it.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::path::Path;

use crate::anatomy::Anatomy;
use crate::read::Checkpoint;

/// A human-readable report: architecture, sizes, dtypes, parameter count, unplaced tensors.
pub fn report(shown_path: &Path, checkpoint: &Checkpoint, anatomy: &Anatomy) -> String {
    let d = &anatomy.dims;
    let mut out = String::new();
    let mut dtypes: BTreeMap<String, usize> = BTreeMap::new();
    for info in checkpoint.tensors().values() {
        *dtypes.entry(crate::dtype::name(info.dtype)).or_default() += 1;
    }
    let dtypes: Vec<String> = dtypes
        .iter()
        .map(|(k, n)| format!("{k} ({n} tensors)"))
        .collect();
    let prefix = if anatomy.prefix.is_empty() {
        "none".to_string()
    } else {
        format!("`{}`", anatomy.prefix)
    };
    let fixed: Vec<String> = d.fixed.iter().map(|(k, v)| format!("{k} {v}")).collect();
    let _ = writeln!(out, "model:        {}", shown_path.display());
    let _ = writeln!(
        out,
        "architecture: {} (name prefix {prefix})",
        anatomy.rules.name
    );
    let _ = writeln!(out, "layers:       {}", d.layers);
    let _ = writeln!(out, "hidden size:  {}", d.hidden);
    let _ = writeln!(
        out,
        "heads:        {} (key/value heads {})",
        d.heads, d.kv_heads
    );
    let _ = writeln!(out, "head size:    {}", d.head_dim);
    let _ = writeln!(out, "ffn size:     {}", d.ffn);
    let _ = writeln!(
        out,
        "vocabulary:   {}",
        d.fixed
            .get("vocab")
            .map_or("none".to_string(), usize::to_string)
    );
    let _ = writeln!(out, "fixed sizes:  {}", fixed.join(", "));
    let _ = writeln!(
        out,
        "output head:  {}",
        match (anatomy.has_head(), d.tied) {
            (false, _) => "none (base model: outputs hidden states)",
            (true, true) => "tied to the token embedding",
            (true, false) => "untied",
        }
    );
    let _ = writeln!(out, "dtype:        {}", dtypes.join(", "));
    let _ = writeln!(out, "tensors:      {}", checkpoint.tensors().len());
    let _ = writeln!(out, "parameters:   {}", anatomy.parameters(checkpoint));
    if anatomy.unclaimed.is_empty() {
        let _ = writeln!(out, "unplaced:     none");
    } else {
        let _ = writeln!(
            out,
            "unplaced:     {} tensors no rule claims:",
            anatomy.unclaimed.len()
        );
        for name in &anatomy.unclaimed {
            let _ = writeln!(out, "  {name}");
        }
    }
    out
}
