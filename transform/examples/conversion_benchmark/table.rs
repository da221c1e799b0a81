//! The printed table: each figure beside its target, then the tensors of the dense comparison.

use serde_json::Value;

pub fn print_table(rows: &[Value]) {
    println!(
        "\n{:<10} {:<10} {:<5} {:>9} {:>6} {:>5} {:>6} {:>9} {:>12} {:>7} {:>12} {:>12}",
        "operation",
        "model",
        "dtype",
        "in+out GB",
        "wall s",
        "GB/s",
        "copy s",
        "copy max",
        "vs copy",
        "peak MB",
        "RSS limit MB",
        "dense/ours",
    );
    println!(
        "{:>57} {:>12} {:>20} {:>12}",
        "(/ copy s)", "(target <= 1.5)", "(2 x largest + 100)", "(1 thread)"
    );
    for r in rows {
        let gb = (r["input_bytes"].as_u64().unwrap_or(0) + r["output_bytes"].as_u64().unwrap_or(0))
            as f64
            / 1e9;
        let verdict = |ok: &Value| {
            if ok.as_bool() == Some(true) {
                "ok"
            } else {
                "FAIL"
            }
        };
        println!(
            "{:<10} {:<10} {:<5} {:>9.2} {:>6.2} {:>5.2} {:>6.2} {:>8.1}x {:>7.2} {:<4} {:>7.0} {:>7.0} {:<4} {:>11.1}x",
            r["operation"].as_str().unwrap_or(""),
            r["model"].as_str().unwrap_or(""),
            r["dtype"].as_str().unwrap_or(""),
            gb,
            r["wall_s"].as_f64().unwrap_or(f64::NAN),
            r["gb_per_s"].as_f64().unwrap_or(f64::NAN),
            r["copy_wall_s"].as_f64().unwrap_or(f64::NAN),
            r["copy_slowest_over_fastest"].as_f64().unwrap_or(f64::NAN),
            r["ratio_to_copy"].as_f64().unwrap_or(f64::NAN),
            verdict(&r["ratio_to_copy_ok"]),
            r["peak_rss_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
            r["rss_limit_bytes"].as_u64().unwrap_or(0) as f64 / 1e6,
            verdict(&r["rss_ok"]),
            r["dense"]["dense_ratio"].as_f64().unwrap_or(f64::NAN),
        );
    }
    println!(
        "\ndense/ours: time of the dense-matrix operator over the streaming executor's on these tensors:"
    );
    for r in rows {
        println!(
            "  {:<10} {:<10} {:<5} {}",
            r["operation"].as_str().unwrap_or(""),
            r["model"].as_str().unwrap_or(""),
            r["dtype"].as_str().unwrap_or(""),
            r["dense"]["tensors"]
                .as_array()
                .map(|t| t
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "))
                .unwrap_or_default()
        );
    }
}
