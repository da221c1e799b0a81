//! A model's checkpoints: the trait that maps a Burn module to a model directory its rules
//! describe, the layout that carries it out, the sizes `config.json` records, and the Adam
//! moments carried across a boundary.

pub(crate) mod files;
pub(crate) mod layout;
pub mod moments;
pub(crate) mod resizable;
pub(crate) mod sizes;
