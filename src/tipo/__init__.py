"""TIPO prompt presampling."""
