//! seal (placeholder)
