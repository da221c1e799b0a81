//! `vcycle inspect --symmetry`: the symmetry de-coalescing creates and interpolation is meant
//! to break, measured per weight matrix (every 2-D float tensor).
//!
//! - A *duplicate row* is a row equal, value for value, to an earlier row of the same matrix
//!   (values decoded to f64 and compared by bit pattern, with −0 = +0); duplicate columns
//!   likewise. Both axes are counted because which one holds neurons depends on the storage
//!   layout (GPT-2's Conv1D is [in, out], `nn.Linear` [out, in]): de-coalescing duplicates
//!   `out` neurons and splits `in` ones into equal halves, so both show up. A class of k equal
//!   rows counts k − 1.
//! - With the `linalg` feature (LAPACK through the system OpenBLAS), the numerical rank: the
//!   number of singular values σ_i > σ_max · max(m, n) · ε with ε the f64 machine epsilon (the
//!   SVD runs in f64 on the stored values, decoded exactly), so it is the rank of the stored
//!   matrix up to the SVD's own rounding; and the smallest singular values relative to σ_max.

use std::collections::HashSet;
use std::fmt::Write;

use crate::anatomy::Anatomy;
use crate::error::Result;
use crate::read::Checkpoint;

/// The symmetry of one weight matrix.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct MatrixSymmetry {
    pub name: String,
    pub shape: [usize; 2],
    /// The axes as the claiming rule writes them (`hidden:in`, `attn:out`), if any claims it.
    pub axes: Option<[String; 2]>,
    /// Rows equal to an earlier row.
    pub duplicate_rows: usize,
    /// Columns equal to an earlier column.
    pub duplicate_columns: usize,
    /// The numerical rank and smallest singular values (`linalg` feature only).
    pub rank: Option<Rank>,
}

/// The numerical rank of a matrix.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Rank {
    pub rank: usize,
    /// min(m, n): the rank of a full-rank matrix.
    pub full: usize,
    pub largest: f64,
    /// The smallest singular values, ascending.
    pub smallest: Vec<f64>,
}

/// Whether this build computes ranks (the `linalg` feature).
pub const RANKS: bool = cfg!(feature = "linalg");

/// Measures every 2-D float tensor of a checkpoint, in natural name order.
pub fn analyze(checkpoint: &Checkpoint, anatomy: &Anatomy) -> Result<Vec<MatrixSymmetry>> {
    let mut names: Vec<&String> = checkpoint.tensors().keys().collect();
    names.sort_by_cached_key(|n| crate::plan::natural_key(n));
    let mut out = Vec::new();
    for name in names {
        let Some(info) = checkpoint.info(name) else {
            continue;
        };
        let &[rows, cols] = info.shape.as_slice() else {
            continue;
        };
        if !crate::dtype::is_float(info.dtype) {
            continue;
        }
        let values = checkpoint.values(name)?;
        let axes = anatomy
            .claims
            .iter()
            .find(|c| &c.name == name)
            .and_then(|c| anatomy.rule_of(c))
            .and_then(|r| match r.axes.as_slice() {
                [a, b] => Some([a.to_string(), b.to_string()]),
                _ => None,
            });
        out.push(MatrixSymmetry {
            name: name.clone(),
            shape: [rows, cols],
            axes,
            duplicate_rows: duplicate_rows(&values, cols),
            duplicate_columns: duplicate_rows(&transpose(&values, rows, cols), rows),
            rank: rank(name, &values, rows, cols)?,
        });
    }
    Ok(out)
}

/// Rows (of `width` values) equal to an earlier row.
fn duplicate_rows(values: &[f64], width: usize) -> usize {
    if width == 0 {
        return 0;
    }
    let mut seen = HashSet::new();
    values
        .chunks_exact(width)
        .filter(|row| {
            // + 0.0 turns −0 into +0.
            let key: Vec<u64> = row.iter().map(|v| (v + 0.0).to_bits()).collect();
            !seen.insert(key)
        })
        .count()
}

fn transpose(values: &[f64], rows: usize, cols: usize) -> Vec<f64> {
    let mut out = Vec::with_capacity(values.len());
    for c in 0..cols {
        out.extend((0..rows).filter_map(|r| values.get(r * cols + c)));
    }
    out
}

#[cfg(feature = "linalg")]
fn rank(name: &str, values: &[f64], rows: usize, cols: usize) -> Result<Option<Rank>> {
    use ndarray_linalg::SVD;
    /// How many smallest singular values the report shows.
    const SMALLEST: usize = 3;
    let failed = |reason: String| crate::error::Error::Linalg {
        tensor: name.to_string(),
        shape: vec![rows, cols],
        reason,
    };
    if rows == 0 || cols == 0 {
        return Ok(None);
    }
    let matrix = ndarray::Array2::from_shape_vec((rows, cols), values.to_vec())
        .map_err(|e| failed(e.to_string()))?;
    let (_, sigma, _) = matrix
        .svd(false, false)
        .map_err(|e| failed(e.to_string()))?;
    let largest = sigma.iter().copied().fold(0.0, f64::max);
    let tolerance = largest * rows.max(cols) as f64 * f64::EPSILON;
    let mut ascending = sigma.to_vec();
    ascending.sort_by(f64::total_cmp);
    Ok(Some(Rank {
        rank: sigma.iter().filter(|&&s| s > tolerance).count(),
        full: rows.min(cols),
        largest,
        smallest: ascending.into_iter().take(SMALLEST).collect(),
    }))
}

#[cfg(not(feature = "linalg"))]
fn rank(_name: &str, _values: &[f64], _rows: usize, _cols: usize) -> Result<Option<Rank>> {
    Ok(None)
}

/// The `--symmetry` section of `inspect`: one line per matrix and a total.
pub fn report(matrices: &[MatrixSymmetry]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "symmetry:     {} weight matrices (2-D float tensors); a duplicate row (column) equals an earlier one value for value",
        matrices.len()
    );
    if RANKS {
        let _ = writeln!(
            out,
            "              rank: singular values above sigma_max * max(m, n) * f64 epsilon"
        );
    } else {
        let _ = writeln!(
            out,
            "              rank: not computed; it needs the `linalg` feature (cargo build --features linalg, with libopenblas-dev)"
        );
    }
    let (mut rows, mut cols, mut deficient, mut with_duplicates) = (0, 0, 0, 0);
    for m in matrices {
        let axes = m
            .axes
            .as_ref()
            .map_or(String::new(), |[a, b]| format!(" ({a}, {b})"));
        let _ = write!(
            out,
            "  {} [{}, {}]{axes}: duplicate rows {}/{}, columns {}/{}",
            m.name,
            m.shape[0],
            m.shape[1],
            m.duplicate_rows,
            m.shape[0],
            m.duplicate_columns,
            m.shape[1]
        );
        if let Some(r) = &m.rank {
            let relative: Vec<String> = r
                .smallest
                .iter()
                .map(|s| {
                    if r.largest > 0.0 {
                        format!("{:.1e}", s / r.largest)
                    } else {
                        "0".to_string()
                    }
                })
                .collect();
            let _ = write!(
                out,
                "; rank {}/{}, smallest sigma/sigma_max {}",
                r.rank,
                r.full,
                relative.join(" ")
            );
            if r.rank < r.full {
                deficient += 1;
            }
        }
        let _ = writeln!(out);
        rows += m.duplicate_rows;
        cols += m.duplicate_columns;
        if m.duplicate_rows + m.duplicate_columns > 0 {
            with_duplicates += 1;
        }
    }
    let _ = write!(
        out,
        "  total: {with_duplicates} of {} matrices hold duplicates ({rows} rows, {cols} columns)",
        matrices.len()
    );
    if RANKS {
        let _ = write!(
            out,
            "; {deficient} of {} are rank deficient",
            matrices.len()
        );
    }
    let _ = writeln!(out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_rows_and_columns_equal_to_an_earlier_one() {
        // 3 x 4: rows 0 and 2 equal (−0 = +0); columns 0 and 3 equal.
        let values = [1.0, 2.0, 3.0, 1.0, 4.0, 5.0, 6.0, 4.0, 1.0, 2.0, 3.0, 1.0];
        assert_eq!(duplicate_rows(&values, 4), 1);
        assert_eq!(duplicate_rows(&transpose(&values, 3, 4), 3), 1);
        let signed = [0.0, 1.0, -0.0, 1.0, 0.0, 1.0];
        assert_eq!(duplicate_rows(&signed, 2), 2);
        assert_eq!(duplicate_rows(&[], 0), 0);
    }

    #[cfg(feature = "linalg")]
    #[test]
    fn a_duplicated_row_costs_one_rank() {
        let values = [1.0, 2.0, 3.0, 4.0, 5.0, 7.0, 1.0, 2.0, 3.0];
        let r = rank("m", &values, 3, 3).ok().flatten();
        assert_eq!(r.as_ref().map(|r| (r.rank, r.full)), Some((2, 3)));
        assert!(r.is_some_and(|r| r.smallest[0] < 1e-12 * r.largest));
        let full = rank("m", &[2.0, 1.0, 1.0, 3.0], 2, 2).ok().flatten();
        assert_eq!(full.map(|r| r.rank), Some(2));
    }
}
