export * from './schema.js';
export { defaultsFor, mslrBand, MSLR_BANDS } from './defaults.js';
export { ConfigError } from './errors.js';
export { detectFamily, modelFilesDir, cachedHubSnapshot, hubCacheDir, requireModelDir, ModelNotFoundError } from './model.js';
export { resolveConfig, loadConfigFile, configToYaml, type ResolveOptions } from './resolve.js';
export { describeConfigKeys } from './describe.js';
export { datasetSchema, datasetObjectSchema, resolveDataset, isRegistryDataset, datasetLabel, datasetNumLabels, type DatasetSpec, type RegistryDataset } from './dataset.js';
