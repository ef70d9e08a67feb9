//! Where every host stands: derived from releases, reports and the server's last contact.
//!
//! May import: `release`, `report`. Reads the state directory; never builds or publishes.

pub mod derive;
