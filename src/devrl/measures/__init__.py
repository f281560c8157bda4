"""Instruments any study may use: behaviour evaluation, the LLC (with its known answers, the
regime study of the estimator, the policy LLC and the output layer's), essential dynamics, and the
general diversity and localisation measures."""
