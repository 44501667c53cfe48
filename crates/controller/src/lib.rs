//! strom-controller: see DESIGN.md.
