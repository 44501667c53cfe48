//! strom-client: see DESIGN.md.
