export { train, sessionOptions, type TrainOptions } from './loop.js';
export { learningRate, rho, gaSettings } from './schedule.js';
export { expectedGaBranch, type GaBranch } from './gating.js';
export { STRATEGIES, trainSpec, type Strategies } from './methods.js';
export { selectionScore } from './selection.js';
export type { MethodResult, RunResults, ProgressEvent, MetricRecord, MetricsWriter } from './types.js';
