"""Operations: status, doctor, the demo, purges and store copies."""
