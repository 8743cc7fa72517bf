//! media (placeholder)
