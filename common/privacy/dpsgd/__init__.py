"""DP-SGD: Opacus training over CSR rows, one-pass linear clipping, parallel noise, FedSGD steps."""
