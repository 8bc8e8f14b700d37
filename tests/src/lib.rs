//! larder's conformance suite and Redis examples (see the package manifest).
