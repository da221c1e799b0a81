//! Gathers: means and sums along rows and columns, duplicates and splits that invert them,
//! gathers of whole blocks, and fused axes.

use super::*;
use crate::scheme::SchemeSpec;

fn grouping(groups: Vec<Vec<usize>>, large: usize) -> Grouping {
    let small = groups.len();
    Grouping::from_groups(groups, large, small, "test").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn mean_and_sum_along_rows_and_columns() {
    // 2 x 4 matrix, columns grouped [[0,2],[1,3]].
    let g = grouping(vec![vec![0, 2], vec![1, 3]], 4);
    let data = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0];
    assert_eq!(
        Gather::new(AxisOp::Mean, &g)
            .apply(&data, &[2, 4], 1)
            .unwrap(),
        [2.0, 3.0, 6.0, 7.0]
    );
    assert_eq!(
        Gather::new(AxisOp::Sum, &g)
            .apply(&data, &[2, 4], 1)
            .unwrap(),
        [4.0, 6.0, 12.0, 14.0]
    );
    // rows grouped [[0,1]] of a 2 x 2.
    let rows = grouping(vec![vec![0, 1]], 2);
    assert_eq!(
        Gather::new(AxisOp::Mean, &rows)
            .apply(&[1.0, 2.0, 3.0, 4.0], &[2, 2], 0)
            .unwrap(),
        [2.0, 3.0]
    );
}

#[test]
fn duplicate_and_split_invert_mean_and_sum() {
    let g = grouping(vec![vec![0, 2], vec![1, 3]], 4);
    let small = [1.0, 2.0, 3.0, 4.0];
    let dup = Gather::new(AxisOp::Duplicate, &g)
        .apply(&small, &[2, 2], 1)
        .unwrap();
    assert_eq!(dup, [1.0, 2.0, 1.0, 2.0, 3.0, 4.0, 3.0, 4.0]);
    let split = Gather::new(AxisOp::Split, &g)
        .apply(&small, &[2, 2], 1)
        .unwrap();
    assert_eq!(split, [0.5, 1.0, 0.5, 1.0, 1.5, 2.0, 1.5, 2.0]);
    assert_eq!(
        Gather::new(AxisOp::Mean, &g)
            .apply(&dup, &[2, 4], 1)
            .unwrap(),
        small
    );
    assert_eq!(
        Gather::new(AxisOp::Sum, &g)
            .apply(&split, &[2, 4], 1)
            .unwrap(),
        small
    );
}

#[test]
fn a_gather_of_whole_blocks_is_applied_block_by_block_with_the_same_result() {
    // Value u of 12 goes with value u + 6: blocks of 6.
    let values = grouping(
        vec![
            vec![0, 6],
            vec![1, 7],
            vec![2, 8],
            vec![3, 9],
            vec![4, 10],
            vec![5, 11],
        ],
        12,
    );
    let data: Vec<f64> = (0..24).map(|i| f64::from(i) * 0.37 - 2.0).collect();
    for op in [AxisOp::Mean, AxisOp::Sum, AxisOp::Duplicate, AxisOp::Split] {
        let gather = Gather::new(op, &values);
        let (coarse, b) = gather.blocks();
        assert_eq!(b, 6, "{op:?}");
        let n = gather.input_len();
        let whole = gather.apply(&data[..2 * n], &[2, n], 1).unwrap();
        let blocked = coarse.apply(&data[..2 * n], &[2, n / b, b], 1).unwrap();
        assert_eq!(whole, blocked, "{op:?}");
    }
    // Nothing to block: the gather itself.
    let odd = grouping(vec![vec![0, 1], vec![2]], 3);
    assert_eq!(Gather::new(AxisOp::Mean, &odd).blocks().1, 1);
}

#[test]
fn fused_axes_map_each_part_separately() {
    let g = Grouping::new(&SchemeSpec::Adjacent, 2, 1, "head").unwrap_or_else(|e| panic!("{e}"));
    let fused = Gather::concat(vec![
        Gather::new(AxisOp::Mean, &g),
        Gather::new(AxisOp::Mean, &g),
    ]);
    assert_eq!(
        fused.apply(&[1.0, 3.0, 10.0, 30.0], &[4], 0).unwrap(),
        [2.0, 20.0]
    );
    // Data that does not match the shape is an error, not a panic.
    assert_eq!(fused.apply(&[1.0, 3.0], &[4], 0), Err(GatherError::Shape));
    assert_eq!(fused.apply(&[1.0; 4], &[4], 1), Err(GatherError::Shape));
}
