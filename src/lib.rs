//! ussdb
