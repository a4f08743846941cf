//! quartet-sql
