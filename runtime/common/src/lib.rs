//! projector-common: the few pieces every layer of the host shares, at
//! the bottom of the house so that each crate above can name them.
//!
//! Map: [`shutdown`] is the one stop signal every thread and task the
//! runtime starts obeys; [`sync`] takes back a poisoned lock's guard, the
//! one place poisoning is handled; [`priority`] lowers a processing
//! thread's scheduling priority; [`resident`] reads the process's resident
//! memory. It depends on no crate of the project
//! and knows nothing of plugins, stores, sources or HTTP.

#![deny(missing_docs)]

pub mod priority;
pub mod resident;
pub mod shutdown;
pub mod sync;
