//! One module per subcommand: its arguments and its `run`.

pub mod check;
pub mod collect;
pub mod convert;
pub mod export;
pub mod fsck;
pub mod inspect;
pub mod upload;
