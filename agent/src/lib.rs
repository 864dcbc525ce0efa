//! `tug-agent`: the node agent. So far: node networking ([`network`]).

pub mod network;
