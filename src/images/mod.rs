//! Images other than `host`: what the node fetches and keeps. So far the
//! safe unpacker and the content-addressed store artifacts go through (see
//! `crate::core::image` for what an `image:` names); fetching, pull policy
//! and collection come next (#12).

pub mod store;
pub mod unpack;
