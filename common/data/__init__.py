"""The data layer: sources → validated interaction table → CSR user × item matrix → split → partition."""
