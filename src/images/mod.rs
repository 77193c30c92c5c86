//! Images other than `host`: what the node fetches, keeps and collects
//! (see `crate::core::image` for what an `image:` names, and
//! `crate::core::image_run` for how a container runs from one).
//!
//! `fetch` (artifacts over HTTP) and `oci` (registries) bring trees into
//! the content-addressed `store` through the safe `unpack`er; `manager`
//! decides when to pull (policies, one pull per image, back-off) and
//! collects; `puller` joins the two network sides behind the manager's
//! `Puller` trait.

pub mod fetch;
pub mod formats;
pub mod helper;
pub mod manager;
pub mod oci;
pub mod puller;
pub mod store;
pub mod unpack;
