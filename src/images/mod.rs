//! Images other than `host`: what the node fetches and keeps. So far the
//! safe unpacker artifacts go through (see `crate::core::image` for what an
//! `image:` names); fetching, the store and collection come next (#12).

pub mod unpack;
