//! What the admin command line does, as functions over an opened [`State`].
