//! Identifiers of PBX accounts, shared by the directory snapshot and the
//! group login state, which both key by them.

/// Identifier of a PBX user account.
pub type UserId = u64;
/// Identifier of a PBX group account.
pub type GroupId = u64;
