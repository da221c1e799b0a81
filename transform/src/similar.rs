//! The `similar` schemes: width and depth groups chosen from the large checkpoint itself.
//!
//! Criterion (one for heads and layers): the *merge cost* of a grouping, the squared change
//! that coalescing followed by de-coalescing makes to the parameters that coalescing averages,
//! Σ_groups Σ_{u in g} ‖θ_u − mean_g θ‖². Only averaged (`out`) parameters count: when they
//! are equal within every group, the summed (`in`) parameters make coalescing exact whatever
//! they hold (docs/operator-contract.md §3), so the averaged ones are where a merge loses the function. For a
//! head (a key/value head with its query heads under GQA), θ_u is every `out` slice it owns
//! in every layer: its query/key/value rows, its FFN block's rows (up, gate) and its hidden
//! block (embedding columns, norm parameters, output-projection rows), because hidden and FFN
//! blocks follow the head grouping. For a layer, θ_l is all of the layer's float parameters.
//!
//! With equal groups of k units, the cost is (1/k)·Σ_groups Σ_{u<v in g} ‖θ_u − θ_v‖², so
//! groups are built from the pairwise squared distances: greedily (seed each group with the
//! closest remaining pair, grow it with the unit closest in total to its members), then
//! improved by swapping units between groups while that lowers the cost. Ties go to the lower
//! index, groups list their units in increasing order and are ordered by their first unit, so
//! the same checkpoint always gives the same groups: coalescing and growing back with the
//! saved large model compute the same ones.

use crate::anatomy::{Anatomy, EmbeddingRule};
use crate::error::{Error, Result};
use crate::read::Checkpoint;
use crate::rules::{Axis, Direction, Space};

/// Groups chosen by similarity and their merge cost.
#[derive(Debug, Clone, PartialEq)]
pub struct SimilarGroups {
    pub groups: Vec<Vec<usize>>,
    pub cost: MergeCost,
}

/// The merge cost of the chosen groups and the one strided groups of the same sizes would
/// have (printed in the plan for comparison).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct MergeCost {
    pub chosen: f64,
    pub strided: f64,
}

/// Groups the heads of a large checkpoint (its key/value heads under GQA, whose query heads
/// follow) into `small` equal groups of similar heads.
pub fn head_groups(
    checkpoint: &Checkpoint,
    anatomy: &Anatomy,
    embedding: EmbeddingRule,
    small: usize,
) -> Result<SimilarGroups> {
    let d = &anatomy.dims;
    let units = d.kv_heads;
    let what = if units == d.heads {
        "head"
    } else {
        "key/value head"
    };
    check_sizes(units, small, what)?;
    // Query heads per key/value head; elements per unit of each space.
    let ratio = d.heads.checked_div(units).unwrap_or(1);
    let hidden_block = d.hidden.checked_div(d.heads).unwrap_or(0);
    let ffn_block = d.ffn.checked_div(d.heads).unwrap_or(0);
    let elements = |space: Space, unit: usize| -> Vec<usize> {
        let (per_query, block) = match space {
            Space::Hidden => (true, hidden_block),
            Space::Ffn => (true, ffn_block),
            Space::Attn => (true, d.head_dim),
            Space::Kv => (false, d.head_dim),
        };
        let owners = if per_query {
            unit * ratio..(unit + 1) * ratio
        } else {
            unit..unit + 1
        };
        owners.flat_map(|o| o * block..(o + 1) * block).collect()
    };
    let mut distances = vec![vec![0.0; units]; units];
    for claim in &anatomy.claims {
        let Some(rule) = anatomy.rule_of(claim) else {
            continue;
        };
        // A tied head stored anyway is the token embedding again.
        if d.tied && rule.tied_to.is_some() {
            continue;
        }
        let Some(info) = checkpoint.info(&claim.name) else {
            continue;
        };
        if !crate::dtype::is_float(info.dtype) {
            continue;
        }
        let axes = anatomy.effective_axes(claim.rule, embedding);
        let mut values = None;
        for (axis, axis_index) in axes.iter().zip(0..) {
            let Axis::Model {
                parts,
                dir: Direction::Out,
            } = axis
            else {
                continue;
            };
            let values = match &values {
                Some(v) => v,
                None => values.insert(checkpoint.values(&claim.name)?),
            };
            let mut offset = 0;
            let mut slices: Vec<Vec<usize>> = vec![Vec::new(); units];
            for &part in parts {
                for (unit, slice) in slices.iter_mut().enumerate() {
                    slice.extend(elements(part, unit).into_iter().map(|e| e + offset));
                }
                offset += d.space(part);
            }
            let gathered: Vec<Vec<f64>> = slices
                .iter()
                .map(|idx| gather(values, &info.shape, axis_index, idx))
                .collect();
            add_squared_distances(&mut distances, &gathered);
        }
    }
    Ok(choose(&distances, small))
}

/// Groups the layers of a large checkpoint into `small` equal groups of similar layers.
pub fn layer_groups(
    checkpoint: &Checkpoint,
    anatomy: &Anatomy,
    small: usize,
) -> Result<SimilarGroups> {
    let layers = anatomy.dims.layers;
    check_sizes(layers, small, "layer")?;
    let mut distances = vec![vec![0.0; layers]; layers];
    for (index, rule) in anatomy.rules.tensors.iter().enumerate() {
        if !rule.layered {
            continue;
        }
        let mut per_layer = Vec::with_capacity(layers);
        for layer in 0..layers {
            let claim = anatomy
                .claims
                .iter()
                .find(|c| c.rule == index && c.layer == Some(layer));
            let float = claim
                .and_then(|c| checkpoint.info(&c.name))
                .is_some_and(|info| crate::dtype::is_float(info.dtype));
            match claim {
                Some(c) if float => per_layer.push(checkpoint.values(&c.name)?),
                _ => break,
            }
        }
        // An optional tensor present in some layers only has no pairwise comparison.
        if per_layer.len() == layers {
            add_squared_distances(&mut distances, &per_layer);
        }
    }
    Ok(choose(&distances, small))
}

/// The most units (heads, key/value heads or layers) `similar` groups. Choosing costs
/// O(units²) memory for the pairwise distances, O(units² × parameters per unit) arithmetic to
/// fill them and O(units³ / group size) to seed the groups; beyond this bound that is refused
/// rather than run for hours. Real models have far fewer (at most a few hundred layers).
pub const MAX_SIMILAR_UNITS: usize = 1024;

fn check_sizes(large: usize, small: usize, what: &'static str) -> Result<()> {
    if large > MAX_SIMILAR_UNITS {
        return Err(Error::Scheme {
            what,
            reason: format!(
                "`similar` compares every pair of units and groups at most {MAX_SIMILAR_UNITS} {what} units; the model has {large} (pass strided, adjacent or JSON groups)"
            ),
        });
    }
    if small == 0 || small > large || !large.is_multiple_of(small) {
        return Err(Error::Scheme {
            what,
            reason: format!(
                "`similar` makes equal groups, and {large} {what} units do not divide into {small}"
            ),
        });
    }
    Ok(())
}

/// The values of a tensor whose coordinate along `axis` is in `indices` (in that order),
/// flattened in storage order.
fn gather(values: &[f64], shape: &[usize], axis: usize, indices: &[usize]) -> Vec<f64> {
    let len = shape.get(axis).copied().unwrap_or(1);
    let inner: usize = shape.iter().skip(axis + 1).product();
    let outer: usize = shape.iter().take(axis).product();
    let mut out = Vec::with_capacity(outer * indices.len() * inner);
    for o in 0..outer {
        for &i in indices {
            let start = (o * len + i) * inner;
            if let Some(row) = values.get(start..start + inner) {
                out.extend_from_slice(row);
            }
        }
    }
    out
}

fn add_squared_distances(distances: &mut [Vec<f64>], units: &[Vec<f64>]) {
    for (u, a) in units.iter().enumerate() {
        for (v, b) in units.iter().enumerate().skip(u + 1) {
            let d: f64 = a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum();
            for (i, j) in [(u, v), (v, u)] {
                if let Some(x) = distances.get_mut(i).and_then(|row| row.get_mut(j)) {
                    *x += d;
                }
            }
        }
    }
}

/// The merge cost of a grouping (see the module documentation).
pub fn merge_cost(distances: &[Vec<f64>], groups: &[Vec<usize>]) -> f64 {
    // fold from +0.0: an empty f64 sum is −0.0.
    groups
        .iter()
        .map(|g| group_cost(distances, g))
        .fold(0.0, |a, b| a + b)
}

fn group_cost(distances: &[Vec<f64>], group: &[usize]) -> f64 {
    let pairs = group
        .iter()
        .enumerate()
        .flat_map(|(i, &u)| {
            group
                .iter()
                .skip(i + 1)
                .map(move |&v| dist(distances, u, v))
        })
        .fold(0.0, |a, b| a + b);
    pairs / group.len().max(1) as f64
}

fn dist(distances: &[Vec<f64>], u: usize, v: usize) -> f64 {
    distances
        .get(u)
        .and_then(|row| row.get(v))
        .copied()
        .unwrap_or(0.0)
}

/// Groups and costs for `small` equal groups of the units of a distance matrix.
fn choose(distances: &[Vec<f64>], small: usize) -> SimilarGroups {
    let groups = group_by_distance(distances, small);
    let n = distances.len();
    let strided: Vec<Vec<usize>> = (0..small)
        .map(|i| (i..n).step_by(small.max(1)).collect())
        .collect();
    SimilarGroups {
        cost: MergeCost {
            chosen: merge_cost(distances, &groups),
            strided: merge_cost(distances, &strided),
        },
        groups,
    }
}

/// Partitions the n units of a symmetric distance matrix into `small` groups of n / small
/// units (`small` must divide n) with a low merge cost: greedy seeding, then improving swaps.
/// Deterministic; groups are sorted and ordered by their first unit.
pub fn group_by_distance(distances: &[Vec<f64>], small: usize) -> Vec<Vec<usize>> {
    let n = distances.len();
    let k = n.checked_div(small).unwrap_or(0).max(1);
    let mut unused: Vec<usize> = (0..n).collect();
    let mut groups: Vec<Vec<usize>> = Vec::with_capacity(small);
    while !unused.is_empty() {
        let mut group = Vec::with_capacity(k);
        // The closest remaining pair (the first in index order among equals).
        let seed = unused
            .iter()
            .enumerate()
            .flat_map(|(i, &u)| unused.iter().skip(i + 1).map(move |&v| (u, v)))
            .fold(None::<(f64, usize, usize)>, |best, (u, v)| {
                let d = dist(distances, u, v);
                match best {
                    Some((b, _, _)) if b <= d => best,
                    _ => Some((d, u, v)),
                }
            });
        match (k, seed, unused.first()) {
            (2.., Some((_, u, v)), _) => group.extend([u, v]),
            (_, _, Some(&u)) => group.push(u),
            _ => break,
        }
        unused.retain(|u| !group.contains(u));
        while group.len() < k {
            let next = unused
                .iter()
                .map(|&u| (group.iter().map(|&v| dist(distances, u, v)).sum::<f64>(), u))
                .fold(None::<(f64, usize)>, |best, (d, u)| match best {
                    Some((b, _)) if b <= d => best,
                    _ => Some((d, u)),
                });
            let Some((_, u)) = next else {
                break;
            };
            group.push(u);
            unused.retain(|&x| x != u);
        }
        groups.push(group);
    }
    improve_by_swaps(distances, &mut groups);
    for g in &mut groups {
        g.sort_unstable();
    }
    groups.sort();
    groups
}

/// Swaps units between groups while a swap lowers the merge cost (first improving swap in
/// index order; the cost strictly decreases, so this ends). Each unit's summed distance to
/// every group is kept up to date, so a candidate swap costs O(1) and a pass O(n²).
fn improve_by_swaps(distances: &[Vec<f64>], groups: &mut [Vec<usize>]) {
    let total = merge_cost(distances, groups).abs();
    let threshold = 1e-12 * (1.0 + total);
    let n = distances.len();
    // sums[u][g]: Σ over the units w of group g of d(u, w).
    let mut sums: Vec<Vec<f64>> = (0..n)
        .map(|u| {
            groups
                .iter()
                .map(|g| g.iter().map(|&w| dist(distances, u, w)).sum())
                .collect()
        })
        .collect();
    let sum = |sums: &[Vec<f64>], u: usize, g: usize| {
        sums.get(u)
            .and_then(|row| row.get(g))
            .copied()
            .unwrap_or(0.0)
    };
    // A bound on passes keeps the worst case polynomial.
    for _ in 0..(4 * n + 4) {
        let mut improved = false;
        for g in 0..groups.len() {
            for h in g + 1..groups.len() {
                let (kg, kh) = (groups[g].len() as f64, groups[h].len() as f64);
                for a in 0..groups[g].len() {
                    for b in 0..groups[h].len() {
                        let (ua, ub) = (groups[g][a], groups[h][b]);
                        let d = dist(distances, ua, ub);
                        // The change of the two groups' costs if ua and ub trade places.
                        let delta = (sum(&sums, ub, g) - d - sum(&sums, ua, g)) / kg
                            + (sum(&sums, ua, h) - d - sum(&sums, ub, h)) / kh;
                        if delta >= -threshold {
                            continue;
                        }
                        improved = true;
                        groups[g][a] = ub;
                        groups[h][b] = ua;
                        for (u, row) in sums.iter_mut().enumerate() {
                            let change = dist(distances, u, ub) - dist(distances, u, ua);
                            if let Some(x) = row.get_mut(g) {
                                *x += change;
                            }
                            if let Some(x) = row.get_mut(h) {
                                *x -= change;
                            }
                        }
                    }
                }
            }
        }
        if !improved {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn matrix(points: &[f64]) -> Vec<Vec<f64>> {
        points
            .iter()
            .map(|a| points.iter().map(|b| (a - b) * (a - b)).collect())
            .collect()
    }

    #[test]
    fn too_many_units_are_refused_before_any_work() {
        let message = check_sizes(MAX_SIMILAR_UNITS + 2, 2, "layer")
            .unwrap_err()
            .to_string();
        assert!(message.contains("at most 1024 layer units"), "{message}");
        assert!(check_sizes(MAX_SIMILAR_UNITS, 2, "layer").is_ok());
    }

    #[test]
    fn pairs_the_closest_units() {
        // Points on a line: 0 and 3 are close, 1 and 2 are close.
        let d = matrix(&[0.0, 10.0, 10.5, 0.2]);
        assert_eq!(group_by_distance(&d, 2), vec![vec![0, 3], vec![1, 2]]);
        let c = choose(&d, 2);
        assert!(c.cost.chosen < c.cost.strided, "{c:?}");
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let d = vec![vec![0.0; 6]; 6];
        assert_eq!(
            group_by_distance(&d, 3),
            vec![vec![0, 1], vec![2, 3], vec![4, 5]]
        );
        assert_eq!(group_by_distance(&d, 2), vec![vec![0, 1, 2], vec![3, 4, 5]]);
        assert_eq!(
            group_by_distance(&d, 6),
            (0..6).map(|u| vec![u]).collect::<Vec<_>>()
        );
    }

    #[test]
    fn swaps_fix_what_greedy_seeding_gets_wrong() {
        // Greedy takes the closest pair (1, 2) first and leaves 0 with 3; pairing (0, 1) and
        // (2, 3) costs less.
        let d = matrix(&[0.0, 1.0, 1.9, 2.9]);
        assert_eq!(group_by_distance(&d, 2), vec![vec![0, 1], vec![2, 3]]);
    }

    fn distances() -> impl Strategy<Value = (Vec<Vec<f64>>, usize)> {
        (1usize..6, 1usize..5).prop_flat_map(|(small, k)| {
            let n = small * k;
            prop::collection::vec(0.0f64..10.0, n * n).prop_map(move |raw| {
                let mut d = vec![vec![0.0; n]; n];
                for u in 0..n {
                    for v in u + 1..n {
                        d[u][v] = raw[u * n + v];
                        d[v][u] = raw[u * n + v];
                    }
                }
                (d, small)
            })
        })
    }

    proptest! {
        #[test]
        fn similar_groups_are_an_equal_sorted_partition((d, small) in distances()) {
            let n = d.len();
            let groups = group_by_distance(&d, small);
            prop_assert_eq!(groups.len(), small);
            prop_assert!(groups.iter().all(|g| g.len() == n / small));
            prop_assert!(groups.iter().all(|g| g.windows(2).all(|w| w[0] < w[1])));
            prop_assert!(groups.windows(2).all(|w| w[0][0] < w[1][0]));
            let mut all: Vec<usize> = groups.iter().flatten().copied().collect();
            all.sort_unstable();
            prop_assert_eq!(all, (0..n).collect::<Vec<_>>());
            prop_assert!(crate::scheme::Grouping::from_groups(groups.clone(), n, small, "head").is_ok());
            // Deterministic.
            prop_assert_eq!(group_by_distance(&d, small), groups);
        }
    }
}
