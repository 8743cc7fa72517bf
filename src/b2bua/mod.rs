//! b2bua (placeholder)
