//! strom-broker: see DESIGN.md.
