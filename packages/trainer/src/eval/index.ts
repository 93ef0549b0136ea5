export { accuracy, argmaxRows, asrRows, attackSuccessRate, confusion, type ClassReport, type Confusion } from './metrics.js';
export { predictLabels, Aborted } from './predict.js';
